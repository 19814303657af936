"""The disk cache of instance files: a byte-bounded LRU that survives restarts.

Layout under the cache directory (mode 0700)::

    v1/tmp/                      downloads in progress; emptied at start-up
    v1/objects/ab/<sha256>.<size>.dcm   one published Part-10 file per SOPInstanceUID

A file is written under ``tmp/`` and published by an atomic rename, so a reader never sees a
partial file under its published name. While an HTTP download fills it, a file whose size the
answer gave is an :class:`Arrival`: once its header has identified it (and the reference it was
asked for admits it), ``open_arrival`` opens it and a reader may read whatever has arrived,
waiting for the rest; a failed transfer fails those reads and leaves nothing behind. An instance
cached or already arriving is not written a second time (a series answer repeating a file just
fetched alone is skipped part by part). Its name records the hash of its SOPInstanceUID and its size; at start-up the index
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
import io
import logging
import os
import shutil
import struct
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import trio
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_partial, read_preamble

from trolleyfs.errors import CacheError, CacheFull, PacsError, PacsProtocolError, UnrequestedInstance
from trolleyfs.model import InstanceReference, Reference

log = logging.getLogger(__name__)
T = TypeVar("T")

LAYOUT_VERSION = "v1"
_WRITE_BUFFER = 1024 * 1024
disk_limiter = trio.CapacityLimiter(4)
TOUCH_INTERVAL = 60.0
"""Seconds between two refreshes of a file's modification time (its LRU rank after a restart)."""
_JUST_WRITTEN = 60.0
"""Seconds after publishing during which a file is taken to be in the page cache still."""
_HEAD_BYTES = 64 * 1024
"""Bytes of a file kept in memory while it is received, to identify it from its header."""
_FIRST_LOOK = 4 * 1024
"""Bytes of a file after which its header is read a first time (most headers are shorter)."""
CHECKSUM_DIGITS = 16
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
_LAST_IDENTIFYING_TAG = 0x0020000E
"""SeriesInstanceUID: the header is read up to it (StudyInstanceUID comes just before)."""


@functools.lru_cache(maxsize=65536)
def entry_key(uid: str) -> str:
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class CachedFile:
    path: Path
    size: int


@dataclass(frozen=True)
class Identity:
    uid: str
    study_uid: str
    series_uid: str


@dataclass(eq=False)
class Arrival:
    """A file being received that readers may already open: ``arrived`` bytes of ``size`` are on
    disk. The receiving thread updates ``arrived``; everything else happens on the event loop."""

    uid: str
    size: int | None
    path: Path
    token: trio.lowlevel.TrioToken
    arrived: int = 0
    complete: bool = False
    failed: str = ""
    final_path: Path | None = None
    """Where it is published (set just before the rename, so an open racing it finds it)."""
    waiting: bool = False
    _changed: trio.Event = field(default_factory=trio.Event)

    def progressed(self) -> None:
        """From the receiving thread: more bytes are on disk; wake a reader waiting for them."""
        if self.waiting:
            self.waiting = False
            try:
                self.token.run_sync_soon(self.wake)
            except trio.RunFinishedError:
                pass

    def wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, end: int) -> None:
        """Until bytes up to ``end`` have arrived (or all of them); raises if the transfer failed."""
        while not self.failed and not self.complete and self.arrived < end:
            changed = self._changed
            self.waiting = True  # set before looking again: the thread checks it after writing
            if self.failed or self.complete or self.arrived >= end:
                break
            await changed.wait()
        if self.failed:
            raise PacsError(f"the transfer of this file failed: {self.failed}")


class InstanceCache:
    """Published instance files by SOPInstanceUID. Also the InstanceSink downloaders write into."""

    def __init__(self, root: Path, max_bytes: int, min_free_space: int = 0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.min_free_space = min_free_space
        self._objects = root / LAYOUT_VERSION / "objects"
        self._tmp = root / LAYOUT_VERSION / "tmp"
        self.scratch = root / LAYOUT_VERSION / "scratch"
        """Where derived files are worked on (trolleyfs.derived), on the cache's filesystem so that
        instance files can be linked there; emptied when the cache is opened."""
        self._index: OrderedDict[str, CachedFile] = OrderedDict()
        self._pins: Counter[str] = Counter()
        self._touched: dict[str, float] = {}
        self._written: dict[str, float] = {}
        self._arriving: dict[str, Arrival] = {}
        self._claims = threading.Lock()
        self._fan_out: set[str] = set()
        """Fan-out directories known to exist."""
        """Held while a key moves between arriving and indexed (claims come from other threads)."""
        self.total_bytes = 0
        self.on_skipped: Callable[[], None] = lambda: None
        """Called when a received file is not written: it is cached or arriving already."""
        self.on_arrived: Callable[[str], None] = lambda uid: None
        """Called on the event loop when an instance becomes openable (arriving or published)."""
        self.on_published: Callable[[str, int], None] = lambda uid, size: None
        self.on_refused: Callable[[str], None] = lambda message: None
        """Called on the event loop when a series or study answer held an instance not asked for."""

    @classmethod
    async def open(cls, root: Path, max_bytes: int, min_free_space: int = 0) -> InstanceCache:
        cache = cls(root, max_bytes, min_free_space)
        entries = await trio.to_thread.run_sync(cache._prepare_and_scan, limiter=disk_limiter)
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
            shutil.rmtree(self.scratch, ignore_errors=True)
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
        return entry_key(uid) in self._index

    def peek(self, uid: str) -> CachedFile | None:
        """The published file of ``uid``, or None, without marking it used."""
        return self._index.get(entry_key(uid))

    def get(self, uid: str) -> CachedFile | None:
        """The published file of ``uid`` (marking it most recently used), or None."""
        key = entry_key(uid)
        entry = self._index.get(key)
        if entry is not None:
            self._mark_used(key, entry)
        return entry

    async def open_for_reading(self, uid: str) -> tuple[int, CachedFile] | None:
        """A read-only descriptor on the published file of ``uid``, pinned and marked used until
        ``close_for_reading``; None when it is not cached (or was deleted behind the cache's back,
        which the cache then forgets)."""
        key = entry_key(uid)
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

    def open_arrival(self, uid: str) -> tuple[int, Arrival] | None:
        """A read-only descriptor on a file of known size still being received, pinned like
        ``open_for_reading``'s; None if there is none."""
        key = entry_key(uid)
        arrival = self._arriving.get(key)
        if arrival is None or arrival.size is None:
            return None
        for path in (arrival.path, arrival.final_path):
            if path is None:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # renamed (published) or discarded a moment ago
            self._pins[key] += 1
            return fd, arrival
        return None

    def arriving(self, uid: str) -> bool:
        """Whether a download of ``uid`` is writing it now."""
        return entry_key(uid) in self._arriving

    async def missing(self, uids: Iterable[str]) -> list[str]:
        """Those of ``uids`` neither cached nor arriving."""
        return [uid for uid in uids if uid not in self and not self.arriving(uid)]

    @asynccontextmanager
    async def fetching(self, uid: str) -> AsyncIterator[bool]:
        """Around a download of ``uid``: whether it is still needed. (Opens in this process share
        one download already; a shared cache also waits here for another host fetching it.)"""
        yield True

    @asynccontextmanager
    async def exclusive(self, name: str, on_wait: Callable[[], None]) -> AsyncIterator[None]:
        """Around work (a series read-ahead) that one holder at a time should do. A private cache
        has no one else to wait for; a shared one waits for other hosts, calling ``on_wait`` now
        and then meanwhile (their files may be arriving)."""
        yield

    def close_for_reading(self, uid: str, fd: int) -> None:
        os.close(fd)
        self._unpin(entry_key(uid))

    def _unpin(self, key: str) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]
            if self.total_bytes > self.max_bytes and key in self._index:
                self._evict_soon()

    @contextmanager
    def wanted(self, uid: str) -> Iterator[None]:
        """Pin ``uid`` for the block, cached or not yet: a file published while a reader waits for
        it is not evicted before that reader opens it."""
        key = entry_key(uid)
        self._pins[key] += 1
        try:
            yield
        finally:
            self._unpin(key)

    def _evict_soon(self, free: int | None = None) -> None:
        """Evict from synchronous code, on the event loop (a file over the bound was kept while
        it was open, or one was published by a receiving thread)."""
        try:
            trio.lowlevel.spawn_system_task(self._evict_quietly, free)
        except RuntimeError:
            pass  # no event loop: the next publish evicts

    async def _evict_quietly(self, free: int | None) -> None:
        try:
            await self._evict(free)
        except Exception:  # a system task must not raise; the next publish tries again
            log.exception("evicting cache files failed")

    def _mark_used(self, key: str, entry: CachedFile) -> None:
        self._index.move_to_end(key)
        now = time.monotonic()
        if now - self._touched.get(key, -TOUCH_INTERVAL) >= TOUCH_INTERVAL:
            self._touched[key] = now
            try:
                os.utime(entry.path)
            except OSError as exc:
                log.debug("cannot refresh %s: %s", entry.path, exc)

    def just_written(self, uid: str) -> bool:
        """Whether this process published ``uid`` moments ago, so that reading it costs no disk
        access (its pages are still in the page cache) and need not leave the event loop."""
        written = self._written.get(entry_key(uid))
        return written is not None and time.monotonic() - written < _JUST_WRITTEN

    def _remove(self, key: str) -> CachedFile:
        entry = self._index.pop(key)
        self._touched.pop(key, None)
        self._written.pop(key, None)
        self.total_bytes -= entry.size
        return entry

    def new_writer(self) -> Writer:
        """A writer for one download; hand it to ``publish`` or ``discard`` when it is complete."""
        return Writer(self._tmp / self._part_name(), checksummed=self._checksummed)

    _checksummed = False
    """Whether writers compute a checksum of what they write (for names that record it)."""

    def _part_name(self) -> str:
        return f"{uuid.uuid4().hex}.part"

    async def publish(self, writer: Writer, expected: Reference | None = None) -> CachedFile:
        """Identify a complete download by its SOPInstanceUID and publish it atomically; with
        ``expected``, an instance it does not admit is UnrequestedInstance. On any failure the
        download is discarded."""
        try:
            uid, final, free = await trio.to_thread.run_sync(
                self._finish, writer, expected, limiter=disk_limiter
            )
        except BaseException:
            await self.discard(writer)
            raise
        writer.uid = uid
        entry = CachedFile(final, writer.size)
        await self._index_published(uid, entry, free)
        return entry

    def open_part(self, expected: Reference, size: int | None, token: trio.lowlevel.TrioToken) -> StreamedPart:
        """From a worker thread: a writer of one file received by HTTP; ``token`` is the event
        loop's that owns this cache."""
        return StreamedPart(self, expected, size, token)

    def claim(self, identity: Identity, arrival: Arrival) -> bool:
        """From the receiving thread: take ``identity`` for ``arrival``, unless it is cached or
        arriving already. It does not wait for the event loop, which is told soon after."""
        key = entry_key(identity.uid)
        with self._claims:
            taken = key in self._index or key in self._arriving or not self._take_elsewhere(key)
            if not taken:
                self._arriving[key] = arrival
        if taken:
            _soon(arrival.token, self.on_skipped)
            return False
        _soon(arrival.token, self.on_arrived, identity.uid)
        return True

    def _take_elsewhere(self, key: str) -> bool:
        """Under ``_claims``: whether no other process writes or has published ``key`` (a
        private cache has no other process); True takes it until ``_release_elsewhere``."""
        return True

    def _release_elsewhere(self, key: str) -> None:
        """A claimed ``key`` was renamed into place or abandoned (any thread)."""

    def abandon(self, arrival: Arrival, reason: str) -> None:
        """On the event loop: the transfer of ``arrival`` failed; its readers get EIO."""
        with self._claims:
            if self._arriving.get(entry_key(arrival.uid)) is arrival:
                del self._arriving[entry_key(arrival.uid)]
                self._release_elsewhere(entry_key(arrival.uid))
        arrival.failed = reason or "transfer failed"
        arrival.wake()
        self.on_arrived(arrival.uid)

    def publish_arrival(self, arrival: Arrival, entry: CachedFile, free: int) -> None:
        """On the event loop: a received file was renamed into place; index it, then tell its
        readers (eviction, if the bound is passed, follows in the background)."""
        self._index_now(arrival.uid, entry, arrival)
        arrival.complete = True
        arrival.wake()
        self.on_published(arrival.uid, entry.size)
        self.on_arrived(arrival.uid)
        if self._needs_eviction(free):
            self._evict_soon(free)

    async def discard(self, writer: Writer) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.discard, limiter=disk_limiter)

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
        identity = writer.identity(complete=True, expected=expected)
        assert identity is not None
        final = self.final_path(identity.uid, writer)
        os.replace(writer.path, final)
        return identity.uid, final, free_bytes(self.root)

    def final_path(self, uid: str, writer: Writer) -> Path:
        """Where ``uid``, written by ``writer``, is published (its fan-out directory made)."""
        key = entry_key(uid)
        final = self._objects / key[:2] / self._entry_name(key, writer)
        if key[:2] not in self._fan_out:
            final.parent.mkdir(mode=0o700, exist_ok=True)
            self._fan_out.add(key[:2])
        return final

    def _entry_name(self, key: str, writer: Writer) -> str:
        return f"{key}.{writer.size}.dcm"

    def _needs_eviction(self, free: int) -> bool:
        return self.total_bytes > self.max_bytes or free < self.min_free_space

    async def _index_published(self, uid: str, entry: CachedFile, free: int) -> None:
        self._index_now(uid, entry)
        await self._evict(free)

    def _index_now(self, uid: str, entry: CachedFile, arrival: Arrival | None = None) -> None:
        key = entry_key(uid)
        with self._claims:  # no claim sees it neither arriving nor indexed
            if arrival is not None and self._arriving.get(key) is arrival:
                del self._arriving[key]
            previous = self._remove(key) if key in self._index else None
            self._index[key] = entry
        if previous is not None and previous.path != entry.path:
            previous.path.unlink(missing_ok=True)
        self._touched[key] = self._written[key] = time.monotonic()
        self.total_bytes += entry.size

    async def _evict(self, free: int | None = None) -> None:
        if free is None:
            free = await trio.to_thread.run_sync(free_bytes, self.root, limiter=disk_limiter)
        if not self._needs_eviction(free):
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
            await trio.to_thread.run_sync(_unlink_all, victims, limiter=disk_limiter)

    async def clear(self) -> None:
        """Forget and delete every unpinned entry."""
        victims = [self._remove(key) for key in list(self._index) if not self._pins.get(key)]
        await trio.to_thread.run_sync(_unlink_all, victims, limiter=disk_limiter)


class Writer:
    """A temporary file being filled, its first bytes kept to identify it. Asynchronous writes
    (DIMSE) are batched so that few of them cross to a thread; ``write_now`` writes at once from
    the thread that receives the bytes. The file is created by the first bytes that reach it."""

    def __init__(self, path: Path, checksummed: bool = False) -> None:
        self.path = path
        self.size = 0
        self._digest = hashlib.sha256() if checksummed else None
        self.uid = ""
        """The SOPInstanceUID, set once the file is published."""
        self._named: str | None = None
        self.head = bytearray()
        self.make_room: Callable[[], None] | None = None
        """Called (once per write) when the disk is full, to free space before writing on."""
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _WRITE_BUFFER:
            await trio.to_thread.run_sync(self.write_pending, limiter=disk_limiter)

    def write_pending(self) -> None:
        chunks, self._pending, self._pending_size = self._pending, [], 0
        for chunk in chunks:
            self.write_now(memoryview(chunk))

    def write_now(self, data: memoryview) -> None:
        if len(self.head) < _HEAD_BYTES:
            self.head += data[: _HEAD_BYTES - len(self.head)]
        room_made = False
        try:
            if self._file is None:
                self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - closed by close() or discard()
            view = data
            while view:
                try:
                    view = view[self._file.write(view) :]
                except OSError as exc:
                    if exc.errno != errno.ENOSPC or self.make_room is None or room_made:
                        raise
                    room_made = True
                    self.make_room()  # then go on where the write stopped
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CacheFull(f"no space left for the cache in {self.path.parent}") from exc
            raise CacheError(f"cannot write cache file {self.path}: {exc}") from exc
        self.size += len(data)
        if self._digest is not None:
            self._digest.update(data)

    @property
    def checksum(self) -> str:
        """The first 16 hex digits of the SHA-256 of what was written (when checksummed)."""
        assert self._digest is not None
        return self._digest.hexdigest()[:CHECKSUM_DIGITS]

    def named(self, key: str) -> None:
        """This file is no instance but a derived file (trolleyfs.derived): publish it as ``key``
        instead of the SOPInstanceUID of its header."""
        self._named = key

    def identity(self, complete: bool, expected: Reference | None = None) -> Identity | None:
        """Who the file is, from its header, and UnrequestedInstance unless ``expected`` (if
        any) admits it. Its SOPInstanceUID (file meta) is read first; the study and series UIDs
        only when that alone does not decide. None while too little of the file has arrived (only
        when not ``complete``); a complete file that is no Part-10 file is a PacsProtocolError."""
        if self._named is not None:
            return Identity(self._named, "", "")
        uid = self._read(complete, uid_of)
        if uid is None:
            return None
        decided = expected.admits_uid(uid) if expected is not None else True
        if decided is None:
            identity = self._read(complete, identity_of)
            if identity is None:
                return None
        else:
            identity = Identity(uid, "", "")
            if not decided:
                raise UnrequestedInstance(f"received instance {uid}, which was not asked for")
        if decided is None:
            check_admitted(identity, expected)
        return identity

    def _read(self, complete: bool, reader: Callable[[BinaryIO, bool], T | None]) -> T | None:
        if complete and self.size > len(self.head):
            with open(self.path, "rb") as file:
                return reader(file, True)
        return reader(io.BytesIO(self.head), complete)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class StreamedPart:
    """One file received by HTTP, driven from the worker thread reading it (a PartWriter).

    Its header identifies it as soon as it has arrived; then the cache is asked (on the event
    loop) to let it be read while arriving, or — when the instance is cached or arriving already —
    the rest of it is skipped. ``end`` checks the size the answer gave and publishes by rename;
    the event loop indexes it soon after, in order, without the thread waiting for it (so the
    network is never held up by a busy event loop)."""

    def __init__(self, cache: InstanceCache, expected: Reference, size: int | None, token: trio.lowlevel.TrioToken) -> None:
        self._cache = cache
        self._expected = expected
        self._size = size
        self._token = token
        self._writer = cache.new_writer()
        self._writer.make_room = self._make_room
        self._arrival: Arrival | None = None
        self._skipping = False
        self._tried_at = 0

    def write(self, data: memoryview) -> None:
        if self._skipping:
            return
        self._writer.write_now(data)
        arrival = self._arrival
        if arrival is not None:
            arrival.arrived = self._writer.size
            arrival.progressed()
        elif len(self._writer.head) >= (_FIRST_LOOK if not self._tried_at else _HEAD_BYTES) > self._tried_at:
            # identifying costs ~1 ms of Python: look once a typical header is in, once more at
            # the most the head keeps, else when the file is complete
            self._tried_at = len(self._writer.head)
            self._identify(complete=False)

    def _make_room(self) -> None:
        """The disk filled up under the cache (other files, or bounds set too high): drop every
        file not open, on the event loop, and write on; readers of this file never notice."""
        log.warning("cache disk full: evicting every file not open and retrying")
        trio.from_thread.run(self._cache.clear, trio_token=self._token)

    def _identify(self, complete: bool) -> None:
        try:
            identity = self._writer.identity(complete, self._expected)
        except UnrequestedInstance as exc:
            if isinstance(self._expected, InstanceReference):
                raise
            # the rest of the answer is still good: leave this one out, and say so
            _soon(self._token, self._cache.on_refused, str(exc))
            self._skipping = True
            self._writer.discard()
            return
        if identity is None:
            return
        arrival = Arrival(identity.uid, self._size, self._writer.path, self._token, arrived=self._writer.size)
        if self._cache.claim(identity, arrival):
            self._arrival = arrival
        else:
            self._skipping = True
            self._writer.discard()

    def end(self) -> None:
        if self._skipping:
            return
        writer = self._writer
        try:
            writer.close()
            if self._arrival is None:
                self._identify(complete=True)
                if self._skipping:
                    return
            arrival = self._arrival
            assert arrival is not None
            if self._size is not None and self._size != writer.size:
                # which of the two is right is unknown: nothing is cached, its readers get EIO
                raise PacsProtocolError(f"the PACS announced {self._size} bytes of an instance and sent {writer.size}")
            final = self._cache.final_path(arrival.uid, writer)
            arrival.final_path = final
            os.replace(writer.path, final)
            free = free_bytes(self._cache.root)
        except BaseException:
            self.abort()
            raise
        self._cache._release_elsewhere(entry_key(arrival.uid))  # on disk: other hosts may read it now
        entry = CachedFile(final, writer.size)
        writer.uid = arrival.uid
        _soon(self._token, self._cache.publish_arrival, arrival, entry, free)

    def abort(self) -> None:
        self._writer.discard()
        arrival, self._arrival = self._arrival, None
        if arrival is not None:
            _soon(self._token, self._cache.abandon, arrival, "")


def _soon(token: trio.lowlevel.TrioToken, function: Callable[..., object], *args: object) -> None:
    """Run ``function(*args)`` on the event loop soon, without waiting for it (callbacks run in
    the order they are asked for, and before the worker thread's own result is delivered)."""

    def guarded() -> None:
        try:
            function(*args)
        except Exception:  # an exception here would end trio's run
            log.exception("cache bookkeeping failed")

    try:
        token.run_sync_soon(guarded)
    except trio.RunFinishedError:
        pass


def check_admitted(identity: Identity, expected: Reference | None) -> None:
    """UnrequestedInstance unless ``expected`` (if any) admits this instance."""
    if expected is not None and not expected.admits(identity.study_uid, identity.series_uid, identity.uid):
        raise UnrequestedInstance(
            f"received instance {identity.uid} of series {identity.series_uid}, which was not asked for"
        )


def uid_of(file: BinaryIO, complete: bool) -> str | None:
    """The MediaStorageSOPInstanceUID of a Part-10 file's meta information (~0.1 ms, where the
    header up to the series UID takes ~1 ms: only pydicom's element reader runs, no dataset is
    built); None while the meta is cut short."""
    reached_dataset = False

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal reached_dataset
        reached_dataset = tag >> 16 != 0x0002  # the meta was read whole: a dataset element follows
        return reached_dataset

    uid = ""
    try:
        read_preamble(file, False)
        for element in data_element_generator(file, False, True, stop_when=stop):
            if element.tag == _MEDIA_STORAGE_SOP_INSTANCE_UID and isinstance(element.value, bytes):
                uid = element.value.decode("ascii", "replace").rstrip("\0 ")
    except (InvalidDicomError, OSError, ValueError, EOFError, struct.error, KeyError, IndexError) as exc:
        if not complete:
            return None
        raise PacsProtocolError(f"received data is not a DICOM Part-10 file: {exc}") from exc
    if not complete and not reached_dataset:
        return None
    if not uid:
        raise PacsProtocolError("received DICOM file has no MediaStorageSOPInstanceUID")
    return uid


def identity_of(file: BinaryIO, complete: bool) -> Identity | None:
    """The SOPInstanceUID (file meta) and study and series UIDs of a Part-10 file, read up to its
    SeriesInstanceUID. With ``complete`` False the file may be cut anywhere: None unless the
    header was read past that element, so that no value cut short is ever taken."""
    past_series = False

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal past_series
        past_series = int(tag) > _LAST_IDENTIFYING_TAG
        return past_series

    try:
        dataset = read_partial(file, stop_when=stop, defer_size=4096)
        uid = str(dataset.file_meta.get("MediaStorageSOPInstanceUID", "") if dataset.file_meta else "")
        study_uid, series_uid = str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SeriesInstanceUID", ""))
    except (InvalidDicomError, OSError, ValueError, EOFError, struct.error, KeyError, IndexError) as exc:
        if not complete:
            return None
        raise PacsProtocolError(f"received data is not a DICOM Part-10 file: {exc}") from exc
    if not complete and not past_series:
        return None
    if not uid:
        raise PacsProtocolError("received DICOM file has no MediaStorageSOPInstanceUID")
    return Identity(uid, study_uid, series_uid)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _unlink_all(entries: list[CachedFile]) -> None:
    for entry in entries:
        entry.path.unlink(missing_ok=True)
