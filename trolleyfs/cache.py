"""The disk cache of instance files: a byte-bounded LRU that survives restarts.

Layout under the cache directory (mode 0700)::

    v1/tmp/                      downloads in progress; emptied at start-up
    v1/objects/ab/<sha256>.<size>.dcm   one published Part-10 file per SOPInstanceUID

A file is written under ``tmp/`` and published by an atomic rename, so a reader never sees a
partial file. Its name records the hash of its SOPInstanceUID and its size; at start-up the index
is rebuilt from these names (LRU order from modification times, which opens refresh at most once a
minute per file, so that warm reads cost no disk write), and
a file whose size disagrees with its name, left by a crash, is deleted instead of served.

Eviction, least recently used first, keeps the total under ``max_bytes`` and the filesystem's free
space above ``min_free_space``; entries pinned by open files are never evicted.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread, read_file_meta_info

from trolleyfs.errors import CacheError, CacheFull, PacsProtocolError, UnrequestedInstance
from trolleyfs.model import Reference

log = logging.getLogger(__name__)

LAYOUT_VERSION = "v1"
_WRITE_BUFFER = 1024 * 1024
_disk_limiter = trio.CapacityLimiter(4)
_TOUCH_INTERVAL = 60.0
"""Seconds between two refreshes of a file's modification time (its LRU rank after a restart)."""
_JUST_WRITTEN = 60.0
"""Seconds after publishing during which a file is taken to be in the page cache still."""


@functools.lru_cache(maxsize=65536)
def _key(uid: str) -> str:
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class CachedFile:
    path: Path
    size: int


class InstanceCache:
    """Published instance files by SOPInstanceUID. Also the InstanceSink downloaders write into."""

    def __init__(self, root: Path, max_bytes: int, min_free_space: int = 0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.min_free_space = min_free_space
        self._objects = root / LAYOUT_VERSION / "objects"
        self._tmp = root / LAYOUT_VERSION / "tmp"
        self._index: OrderedDict[str, CachedFile] = OrderedDict()
        self._pins: Counter[str] = Counter()
        self._touched: dict[str, float] = {}
        self._written: dict[str, float] = {}
        self.total_bytes = 0

    @classmethod
    async def open(cls, root: Path, max_bytes: int, min_free_space: int = 0) -> InstanceCache:
        cache = cls(root, max_bytes, min_free_space)
        entries = await trio.to_thread.run_sync(cache._prepare_and_scan, limiter=_disk_limiter)
        for key, entry in entries:
            cache._index[key] = entry
            cache.total_bytes += entry.size
        await cache._evict()
        return cache

    def _prepare_and_scan(self) -> list[tuple[str, CachedFile]]:
        try:
            for directory in (self.root, self._objects, self._tmp):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.root.chmod(0o700)
            for leftover in self._tmp.iterdir():
                leftover.unlink()
        except OSError as exc:
            raise CacheError(f"cannot prepare cache directory {self.root}: {exc}") from exc
        found: list[tuple[float, str, CachedFile]] = []
        for path in self._objects.glob("*/*.dcm"):
            key, _, size_text = path.stem.partition(".")
            stat = path.stat()
            if not size_text.isdigit() or stat.st_size != int(size_text):
                log.warning("discarding damaged cache file %s", path)
                path.unlink()
                continue
            found.append((stat.st_mtime, key, CachedFile(path, stat.st_size)))
        found.sort(key=lambda item: item[0])
        return [(key, entry) for _, key, entry in found]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, uid: str) -> bool:
        """Whether ``uid`` is cached, without marking it used (``get`` does that)."""
        return _key(uid) in self._index

    def peek(self, uid: str) -> CachedFile | None:
        """The published file of ``uid``, or None, without marking it used."""
        return self._index.get(_key(uid))

    def get(self, uid: str) -> CachedFile | None:
        """The published file of ``uid`` (marking it most recently used), or None."""
        key = _key(uid)
        entry = self._index.get(key)
        if entry is not None:
            self._mark_used(key, entry)
        return entry

    def open_for_reading(self, uid: str) -> tuple[int, CachedFile] | None:
        """A read-only descriptor on the published file of ``uid``, pinned and marked used until
        ``close_for_reading``; None when it is not cached (or was deleted behind the cache's back,
        which the cache then forgets)."""
        key = _key(uid)
        entry = self._index.get(key)
        if entry is None:
            return None
        try:
            fd = os.open(entry.path, os.O_RDONLY)  # a local open: cheaper than a thread hop
        except FileNotFoundError:
            self._remove(key)
            return None
        self._pins[key] += 1
        self._mark_used(key, entry)
        return fd, entry

    def close_for_reading(self, uid: str, fd: int) -> None:
        os.close(fd)
        key = _key(uid)
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]

    def _mark_used(self, key: str, entry: CachedFile) -> None:
        self._index.move_to_end(key)
        now = time.monotonic()
        if now - self._touched.get(key, -_TOUCH_INTERVAL) >= _TOUCH_INTERVAL:
            self._touched[key] = now
            try:
                os.utime(entry.path)
            except OSError as exc:
                log.debug("cannot refresh %s: %s", entry.path, exc)

    def just_written(self, uid: str) -> bool:
        """Whether this process published ``uid`` moments ago, so that reading it costs no disk
        access (its pages are still in the page cache) and need not leave the event loop."""
        written = self._written.get(_key(uid))
        return written is not None and time.monotonic() - written < _JUST_WRITTEN

    def _remove(self, key: str) -> CachedFile:
        entry = self._index.pop(key)
        self._touched.pop(key, None)
        self._written.pop(key, None)
        self.total_bytes -= entry.size
        return entry

    def new_writer(self) -> Writer:
        """A writer for one download; hand it to ``publish`` or ``discard`` when it is complete."""
        return Writer(self._tmp / f"{uuid.uuid4().hex}.part")

    async def publish(self, writer: Writer, expected: Reference | None = None) -> CachedFile:
        """Identify a complete download by its SOPInstanceUID and publish it atomically; with
        ``expected``, an instance it does not admit is UnrequestedInstance. On any failure the
        download is discarded."""
        try:
            uid, final, free = await trio.to_thread.run_sync(
                self._finish, writer, expected, limiter=_disk_limiter
            )
        except BaseException:
            await self.discard(writer)
            raise
        writer.uid = uid
        entry = CachedFile(final, writer.size)
        await self._index_published(uid, entry, free)
        return entry

    async def discard(self, writer: Writer) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.discard, limiter=_disk_limiter)

    @asynccontextmanager
    async def receive(self, expected: Reference | None = None) -> AsyncIterator[Writer]:
        """``new_writer`` + ``publish`` as one block: leaving it normally publishes, an exception
        discards."""
        writer = self.new_writer()
        try:
            yield writer
        except BaseException:
            await self.discard(writer)
            raise
        await self.publish(writer, expected)

    def _finish(self, writer: Writer, expected: Reference | None) -> tuple[str, Path, int]:
        """In a worker thread: complete the file, identify it, publish it by rename."""
        writer.write_pending()
        writer.close()
        uid = _sop_instance_uid(writer.path)
        if expected is not None:
            study_uid, series_uid = _study_and_series_uids(writer.path)
            if not expected.admits(study_uid, series_uid, uid):
                raise UnrequestedInstance(f"received instance {uid} of series {series_uid}, which was not asked for")
        key = _key(uid)
        final = self._objects / key[:2] / f"{key}.{writer.size}.dcm"
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(writer.path, final)
        return uid, final, _free_bytes(self.root)

    async def _index_published(self, uid: str, entry: CachedFile, free: int) -> None:
        key = _key(uid)
        if key in self._index:
            previous = self._remove(key)
            if previous.path != entry.path:
                previous.path.unlink(missing_ok=True)
        self._index[key] = entry
        self._touched[key] = self._written[key] = time.monotonic()
        self.total_bytes += entry.size
        await self._evict(free)

    async def _evict(self, free: int | None = None) -> None:
        if free is None:
            free = await trio.to_thread.run_sync(_free_bytes, self.root, limiter=_disk_limiter)
        if self.total_bytes <= self.max_bytes and free >= self.min_free_space:
            return  # the common case, answered without walking the index
        victims: list[CachedFile] = []
        for key in list(self._index):
            if self.total_bytes <= self.max_bytes and free >= self.min_free_space:
                break
            if self._pins.get(key):
                continue
            entry = self._remove(key)
            free += entry.size
            victims.append(entry)
        if victims:
            log.debug("evicting %d cache files", len(victims))
            await trio.to_thread.run_sync(_unlink_all, victims, limiter=_disk_limiter)

    async def clear(self) -> None:
        """Forget and delete every unpinned entry."""
        victims = [self._remove(key) for key in list(self._index) if not self._pins.get(key)]
        await trio.to_thread.run_sync(_unlink_all, victims, limiter=_disk_limiter)


class Writer:
    """A temporary file being filled; writes are batched so that few of them cross to a thread.
    The file itself is created by the first batch that reaches the disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.uid = ""
        """The SOPInstanceUID, set once the file is published."""
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        self.size += len(chunk)
        if self._pending_size >= _WRITE_BUFFER:
            await trio.to_thread.run_sync(self.write_pending, limiter=_disk_limiter)

    def write_pending(self) -> None:
        chunks, self._pending, self._pending_size = self._pending, [], 0
        try:
            if self._file is None:
                self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - closed by close() or discard()
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[self._file.write(view) :]
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CacheFull(f"no space left for the cache in {self.path.parent}") from exc
            raise CacheError(f"cannot write cache file {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _sop_instance_uid(path: Path) -> str:
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PacsProtocolError(f"received data is not a DICOM Part-10 file: {exc}") from exc
    uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
    if not uid:
        raise PacsProtocolError("received DICOM file has no MediaStorageSOPInstanceUID")
    return uid


def _study_and_series_uids(path: Path) -> tuple[str, str]:
    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PacsProtocolError(f"received data is not a DICOM Part-10 file: {exc}") from exc
    return str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SeriesInstanceUID", ""))


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _unlink_all(entries: list[CachedFile]) -> None:
    for entry in entries:
        entry.path.unlink(missing_ok=True)
