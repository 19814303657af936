"""The instance cache as the trolley and the filesystem core see it, whatever keeps it: a private
directory of one daemon (:class:`trolleyfs.cache.InstanceCache`) or one shared by daemons on many
hosts (:class:`trolleyfs.shared_cache.SharedCache`). The composition root (:mod:`trolleyfs.mount`)
picks one by ``cache_mode``; nothing above it names an implementation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Protocol

import trio

from trolleyfs.cache import Arrival, CachedFile, StreamedPart, Writer
from trolleyfs.model import Reference


class Cache(Protocol):
    max_bytes: int
    scratch: Path
    """A directory for work on derived files (made by whoever uses it), on this host."""
    total_bytes: int
    """Bytes held (for a shared cache: as last counted, plus what this host added since)."""
    on_skipped: Callable[[], None]
    on_arrived: Callable[[str], None]
    on_published: Callable[[str, int], None]
    on_refused: Callable[[str], None]

    def __len__(self) -> int: ...

    def __contains__(self, uid: str) -> bool:
        """Whether ``uid`` is known to be cached (a hint for a shared cache: no disk access)."""

    def peek(self, uid: str) -> CachedFile | None: ...

    async def open_for_reading(self, uid: str) -> tuple[int, CachedFile] | None:
        """The published file, pinned until ``close_for_reading``; None when there is none."""

    def open_arrival(self, uid: str) -> tuple[int, Arrival] | None:
        """A file this process is receiving, readable as it arrives; None if there is none."""

    def arriving(self, uid: str) -> bool: ...

    def close_for_reading(self, uid: str, fd: int) -> None: ...

    def wanted(self, uid: str) -> AbstractContextManager[None]: ...

    async def missing(self, uids: Iterable[str]) -> list[str]:
        """Those of ``uids`` neither cached nor arriving (asking the disk, for a shared cache)."""

    def fetching(self, uid: str) -> AbstractAsyncContextManager[bool]:
        """Around one instance's download: whether it is still needed."""

    def exclusive(self, name: str, on_wait: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        """Around work one holder at a time should do (a series read-ahead)."""

    def just_written(self, uid: str) -> bool: ...

    def new_writer(self) -> Writer: ...

    async def publish(self, writer: Writer, expected: Reference | None = None) -> CachedFile: ...

    async def discard(self, writer: Writer) -> None: ...

    def open_part(self, expected: Reference, size: int | None, token: trio.lowlevel.TrioToken) -> StreamedPart: ...

    async def clear(self) -> None: ...
