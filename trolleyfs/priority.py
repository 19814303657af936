"""Foreground before background: which work a task is doing, and slots that keep some for readers.

Read-aheads and listing read-aheads run inside :func:`background`; a connection or association
pool hands out :class:`Slots`, of which background work may hold all but ``reserved``, so that a
reader opening a file while many series are read ahead never queues behind them.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

_background = contextvars.ContextVar("trolleyfs_background", default=False)


def in_background() -> bool:
    return _background.get()


@contextmanager
def background() -> Iterator[None]:
    """Mark the work inside the block (and the tasks it starts) as background work."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


class Slots:
    """``total`` slots; background work holds at most ``total - reserved`` of them (at least 1)."""

    def __init__(self, total: int, reserved: int) -> None:
        self.total = total
        self._all = trio.CapacityLimiter(total)
        self._background = trio.CapacityLimiter(max(1, total - reserved))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if in_background():
            async with self._background, self._all:
                yield
        else:
            async with self._all:
                yield


def reserved_for_readers(total: int) -> int:
    """How many of ``total`` connections foreground reads keep: a quarter, at least one."""
    return max(1, total // 4)
