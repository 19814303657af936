"""Derived files in the instance cache: made once per key, then opened like any cached file.

A key names what a file is made of and how (``preview:<SeriesInstanceUID>:<size>``); it holds a
``:``, which no SOPInstanceUID does, so it never meets an instance. Concurrent opens of one key
share one making; a making that fails leaves nothing behind and each opener gets its error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from trolleyfs.cache import CachedFile, Writer, disk_limiter
from trolleyfs.cache_interface import Cache
from trolleyfs.errors import CacheError
from trolleyfs.singleflight import SingleFlight

_COPY_CHUNK = 1024 * 1024


class DerivedFiles:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._making: SingleFlight[None] = SingleFlight()
        self.made = 0
        """Files made since the mount (a second open of one is a cache hit and makes nothing)."""

    def __contains__(self, key: str) -> bool:
        return key in self.cache

    def peek(self, key: str) -> CachedFile | None:
        return self.cache.peek(key)

    async def open(self, key: str, make: Callable[[], Awaitable[None]]) -> tuple[int, CachedFile]:
        """The cached file ``key``, pinned until ``cache.close_for_reading``; ``make`` (which
        publishes ``key``, with ``publish_bytes`` or ``publish_file``) runs first when it is
        not cached."""
        opened = await self.cache.open_for_reading(key)
        if opened is None:
            await self._making.run(key, make)
            opened = await self.cache.open_for_reading(key)
        if opened is None:
            raise CacheError("a file made moments ago left the cache at once (is cache_size too small?)")
        return opened

    async def once(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` unless a run for ``key`` is under way, then wait for that one instead
        (one conversion for the several files it makes)."""
        await self._making.run(key, work)

    async def publish_bytes(self, key: str, data: bytes) -> CachedFile:
        writer = self._writer(key)
        try:
            await trio.to_thread.run_sync(writer.write_now, memoryview(data), limiter=disk_limiter)
        except BaseException:
            await self.cache.discard(writer)
            raise
        return await self._publish(writer)

    async def publish_file(self, key: str, path: Path) -> CachedFile:
        """Copy the file at ``path`` into the cache as ``key`` (checksummed where the cache is)."""
        writer = self._writer(key)
        try:
            await trio.to_thread.run_sync(_copy_into, path, writer, limiter=disk_limiter)
        except BaseException:
            await self.cache.discard(writer)
            raise
        return await self._publish(writer)

    def _writer(self, key: str) -> Writer:
        writer = self.cache.new_writer()
        writer.named(key)
        return writer

    async def _publish(self, writer: Writer) -> CachedFile:
        entry = await self.cache.publish(writer)
        self.made += 1
        return entry


def _copy_into(path: Path, writer: Writer) -> None:
    with open(path, "rb", buffering=0) as source:
        while chunk := source.read(_COPY_CHUNK):
            writer.write_now(memoryview(chunk))
    if writer.size == 0:  # the writer's file is made by its first bytes: there is none to publish
        raise CacheError(f"{path.name} came out empty")
