"""Coalescing of concurrent identical work: the first caller runs it, the others wait for its end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

from trolleyfs.errors import PacsError, TrolleyError

T = TypeVar("T")


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}

    @property
    def in_flight_count(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, work)
            await flight.done.wait()
            if flight.error is None:
                return flight.result  # type: ignore[return-value]
            if isinstance(flight.error, trio.Cancelled):
                continue  # the leader's caller went away; the work itself did not fail
            if isinstance(flight.error, TrolleyError):
                raise type(flight.error)(*flight.error.args) from flight.error
            raise PacsError(f"{type(flight.error).__name__}: {flight.error}") from flight.error

    async def _lead(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights[key] = _Flight[T]()
        try:
            flight.result = await work()
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
