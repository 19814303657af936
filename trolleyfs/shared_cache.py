"""The shared cache (``cache_mode=shared``): one cache directory that daemons on many hosts use at
once, on a cluster filesystem (NFSv4, CephFS, Lustre, GlusterFS), so that a cluster fetches each
instance from the PACS once. It follows the protocol written down in docs/shared-cache.md:

    shared-v1/<namespace>/objects/ab/<key>.<size>.<checksum>.dcm   published entries
    shared-v1/<namespace>/locks/ab/<key>.lock                      one lock file per entry
    shared-v1/<namespace>/locks/series/<hash>.lock                 one per series read ahead
    shared-v1/<namespace>/tmp/<host>.<pid>-<n>.<random>.part      fetches in progress
    shared-v1/<namespace>/janitor.lock                             who evicts
    shared-v1/<namespace>/usage/<host>.<pid>-<n>                   locked while that daemon lives

A fetch holds its entry lock's fetch byte exclusively, readers share its read byte while a file
is open, and the janitor deletes only what it can take both bytes of; the locks are record locks
(:mod:`trolleyfs.record_locks`), which the kernel drops with a dead process, so another host
takes over its fetch. The in-memory index is only a hint: every open finds the entry by its name,
and an entry gone since (evicted by another host) is fetched again. Lookups, opens, locks and
waits on the shared directory run in a thread, bounded by ``timeout``: a shared filesystem that
stops answering gives EIO, not a hung mount.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import trio

from trolleyfs.cache import (
    CHECKSUM_DIGITS, TOUCH_INTERVAL, Arrival, CachedFile, InstanceCache, Writer, disk_limiter, entry_key, free_bytes,
)
from trolleyfs.errors import CacheError, PacsError
from trolleyfs.record_locks import RecordLocks

log = logging.getLogger(__name__)
T = TypeVar("T")

LAYOUT_VERSION = "shared-v1"
_POLL_FIRST = 0.005
_POLL_MOST = 0.05
"""Seconds between two looks at a lock another host holds (doubling from the first)."""
_SCAN_INTERVAL = 60.0
"""Seconds after which a host that published files counts the shared total again."""
_LOST = (errno.ENOENT, errno.ESTALE)
_BUSY = object()
_READ, _FETCH = 0, 1
"""The bytes of an entry's lock file: readers share the first, a fetch holds the second."""


def namespace_of(source: str) -> str:
    """The namespace of a source: its URL with scheme and host in lower case and no trailing
    slash, hashed (two PACSs sharing one directory never mix their entries)."""
    parts = urlsplit(source.strip())
    normal = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}" if parts.scheme else source.strip()
    return hashlib.sha256(normal.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class _Patience:
    """Looking again at what another host holds: after 5 ms, doubling up to 50 ms, for at most
    ``bound`` seconds in all."""

    def __init__(self, bound: float, what: str) -> None:
        self._deadline = trio.current_time() + bound
        self._bound = bound
        self._what = what
        self._delay = _POLL_FIRST

    async def wait(self) -> None:
        if trio.current_time() > self._deadline:
            raise PacsError(f"another host has been {self._what} for more than {self._bound:g}s")
        await trio.sleep(self._delay)
        self._delay = min(self._delay * 2, _POLL_MOST)


@dataclass(frozen=True)
class _Found:
    key: str
    entry: CachedFile
    checksum: str


def _parse(name: str) -> tuple[str, int, str] | None:
    """(key, size, checksum) of an entry's file name, or None for anything else."""
    parts = name.split(".")
    if len(parts) != 4 or parts[3] != "dcm" or not parts[1].isdigit() or len(parts[2]) != CHECKSUM_DIGITS:
        return None
    return parts[0], int(parts[1]), parts[2]


class SharedCache(InstanceCache):
    """Published instance files in a directory shared by hosts; see the module docstring."""

    _checksummed = True

    def __init__(
        self, root: Path, namespace: str, max_bytes: int, min_free_space: int = 0, *,
        timeout: float = 30.0, wait_bound: float = 300.0,
    ) -> None:
        super().__init__(root, max_bytes, min_free_space)
        self._base = root / LAYOUT_VERSION / namespace
        self._objects = self._base / "objects"
        self._tmp = self._base / "tmp"
        self._lock_dir = self._base / "locks"
        self._usage = self._base / "usage"
        self.timeout = timeout
        """Bound on one call to the shared filesystem."""
        self.wait_bound = wait_bound
        """Bound on waiting for another host that holds a fetch or read-ahead."""
        self._owner = f"{socket.gethostname().replace('.', '_')}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.scratch = Path(tempfile.gettempdir()) / f"trolleyfs-scratch-{self._owner}"  # this host's own
        """Who writes this cache's temporary files: host, process, and a random part (a container
        restarted with its host name and process number is another owner)."""
        self._lock_fan_out: set[str] = set()
        self._locks = RecordLocks()
        self._verified: set[str] = set()
        self._damaged: set[str] = set()
        """Names of damaged entries that could not be deleted (another host had them open)."""
        """Keys whose entry this process wrote or checked against its name."""
        self._janitor_running = False
        self._janitor_bound: int | None = None
        """The bound the next janitor run evicts to; None when none is asked for."""
        self._scanned_at = -math.inf
        self._published_since_scan = 0

    @classmethod
    async def open_shared(
        cls, root: Path, namespace: str, max_bytes: int, min_free_space: int = 0, *,
        timeout: float = 30.0, wait_bound: float = 300.0,
    ) -> SharedCache:
        cache = cls(root, namespace, max_bytes, min_free_space, timeout=timeout, wait_bound=wait_bound)
        found = await cache._disk(cache._prepare_and_list)
        for item in found:
            cache._index[item.key] = item.entry
            cache.total_bytes += item.entry.size
        cache._scanned_at = trio.current_time()
        return cache

    # --- the shared directory ------------------------------------------------------------------

    async def _disk(self, function: Callable[..., T], *args: object, undo: Callable[[T], None] | None = None) -> T:
        """``function(*args)`` in a thread, within ``timeout``: past it the caller gets a
        CacheError and the thread is left to finish (``undo`` then reverts what it did)."""
        mutex = threading.Lock()
        state: dict[str, object] = {}

        def run() -> T:
            result = function(*args)
            with mutex:
                if state.get("abandoned") and undo is not None:
                    undo(result)
                state["result"] = result
            return result

        try:
            with trio.fail_after(self.timeout):
                return await trio.to_thread.run_sync(run, limiter=disk_limiter, abandon_on_cancel=True)
        except BaseException as exc:  # timed out or cancelled: what the thread did (or will do) is undone
            with mutex:
                state["abandoned"] = True
                if "result" in state and undo is not None:
                    undo(state["result"])  # type: ignore[arg-type]
            if isinstance(exc, trio.TooSlowError):
                raise CacheError(f"the shared cache directory {self.root} did not answer within {self.timeout:g}s") from None
            raise

    def _prepare_and_list(self) -> list[_Found]:
        try:
            for directory in (self._objects, self._tmp, self._lock_dir / "series", self._usage):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._locks.try_lock(self._usage / self._owner, exclusive=True):
                raise CacheError(f"another cache of this process uses {self._base}")
        except OSError as exc:
            raise CacheError(f"cannot prepare shared cache directory {self._base}: {exc}") from exc
        return list(self._list_entries())

    def _list_entries(self) -> Iterable[_Found]:
        for fan_out in os.scandir(self._objects):
            if fan_out.is_dir():
                for item in os.scandir(fan_out.path):
                    if (parsed := _parse(item.name)) is not None:
                        key, size, checksum = parsed
                        yield _Found(key, CachedFile(Path(item.path), size), checksum)

    def _find(self, key: str) -> _Found | None:
        """The entry of ``key`` as the shared directory has it now."""
        try:
            names = os.listdir(self._objects / key[:2])
        except FileNotFoundError:
            return None
        for name in names:
            if name.startswith(key) and (parsed := _parse(name)) is not None and parsed[0] == key:
                return _Found(key, CachedFile(self._objects / key[:2] / name, parsed[1]), parsed[2])
        return None

    def _find_entry(self, key: str) -> CachedFile | None:
        found = self._find(key)
        return None if found is None else found.entry

    def _entry_lock(self, key: str) -> Path:
        directory = self._lock_dir / key[:2]
        if key[:2] not in self._lock_fan_out:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fan_out.add(key[:2])
        return directory / f"{key}.lock"

    def _part_name(self) -> str:
        return f"{self._owner}.{super()._part_name()}"

    def _entry_name(self, key: str, writer: Writer) -> str:
        return f"{key}.{writer.size}.{writer.checksum}.dcm"

    # --- reading -------------------------------------------------------------------------------

    async def open_for_reading(self, uid: str) -> tuple[int, CachedFile] | None:
        key = entry_key(uid)
        now = trio.current_time()
        touch = now - self._touched.get(key, -TOUCH_INTERVAL) >= TOUCH_INTERVAL
        patience = _Patience(self.wait_bound, "holding a cache entry")
        while (opened := await self._disk(self._open_entry, key, self._index.get(key), touch, undo=self._undo_open)) is _BUSY:
            await patience.wait()  # a janitor is deleting it
        if opened is None:
            if key in self._index:
                self._remove(key)
            return None
        assert isinstance(opened, tuple)
        fd, found = opened
        self._verified.add(key)
        if key not in self._index:
            self._index[key] = found.entry
        self._index.move_to_end(key)
        if touch:
            self._touched[key] = now
        self._pins[key] += 1
        return fd, found.entry

    def _open_entry(self, key: str, hint: CachedFile | None, touch: bool) -> tuple[int, _Found] | None | object:
        """In a thread: the entry's file opened under a shared lock (so no janitor deletes it
        while it is open), checked against its name the first time; None when there is none to
        serve (not published, being fetched by someone, or damaged); _BUSY when it is published
        but someone holds it exclusively for a moment."""
        if (hint is None or not os.path.exists(hint.path)) and (hint := self._find_entry(key)) is None:
            return None  # not published: no lock taken (it would turn away the fetch of it)
        lock = self._entry_lock(key)
        if not self._locks.try_lock(lock, exclusive=False):
            return _BUSY if self._find(key) is not None else None
        try:
            found = self._open_found(key, hint)
            if found is None:
                self._locks.release(lock, exclusive=False)
                return None
            fd, item = found
            if key not in self._verified and not self._intact(fd, item):
                os.close(fd)
                self._locks.release(lock, exclusive=False)
                self._delete_damaged(key, item)
                return None
            if touch:
                try:
                    os.utime(item.entry.path)
                except OSError as exc:
                    log.debug("cannot refresh %s: %s", item.entry.path, exc)
            return fd, item
        except BaseException:
            if self._locks.holds(lock):
                self._locks.release(lock, exclusive=False)
            raise

    def _open_found(self, key: str, hint: CachedFile | None) -> tuple[int, _Found] | None:
        if hint is not None:
            parsed = _parse(hint.path.name)
            if parsed is not None:
                try:
                    return os.open(hint.path, os.O_RDONLY | os.O_CLOEXEC), _Found(key, hint, parsed[2])
                except OSError as exc:
                    if exc.errno not in _LOST:
                        raise
        found = self._find(key)
        if found is None:
            return None
        try:
            return os.open(found.entry.path, os.O_RDONLY | os.O_CLOEXEC), found
        except OSError as exc:
            if exc.errno in _LOST:
                return None  # evicted between the listing and the open
            raise

    def _intact(self, fd: int, item: _Found) -> bool:
        digest = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, 1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
        os.lseek(fd, 0, os.SEEK_SET)
        return size == item.entry.size and digest.hexdigest()[:CHECKSUM_DIGITS] == item.checksum

    def _delete_damaged(self, key: str, item: _Found) -> None:
        log.warning("a shared cache entry does not match its recorded size and checksum; fetching it again")
        if not self._delete_unheld(item):
            self._damaged.add(item.entry.path.name)

    def _undo_open(self, opened: tuple[int, _Found] | None | object) -> None:
        if isinstance(opened, tuple):
            os.close(opened[0])
            self._locks.release(self._entry_lock(opened[1].key), exclusive=False)

    def open_arrival(self, uid: str) -> tuple[int, Arrival] | None:
        opened = super().open_arrival(uid)
        if opened is not None and not self._locks.try_lock(self._entry_lock(entry_key(uid)), exclusive=False):
            os.close(opened[0])  # published and taken by a janitor a moment ago
            self._unpin(entry_key(uid))
            return None
        return opened

    def close_for_reading(self, uid: str, fd: int) -> None:
        os.close(fd)
        key = entry_key(uid)
        self._locks.release(self._entry_lock(key), exclusive=False)
        self._unpin(key)

    async def missing(self, uids: Iterable[str]) -> list[str]:
        unknown = [uid for uid in uids if not self.arriving(uid)]
        found = await self._disk(self._look_up_all, unknown) if unknown else {}
        for key, entry in found.items():
            self._index.setdefault(key, entry)  # known now: listings show exact sizes, opens skip read-ahead
        return [uid for uid in unknown if entry_key(uid) not in found]

    def _look_up_all(self, uids: list[str]) -> dict[str, CachedFile]:
        found = {}
        for uid in uids:
            if (entry := self._find_entry(entry_key(uid))) is not None and entry.path.name not in self._damaged:
                found[entry_key(uid)] = entry
        return found

    # --- fetching: one host at a time ----------------------------------------------------------

    @asynccontextmanager
    async def fetching(self, uid: str) -> AsyncIterator[bool]:
        key = entry_key(uid)
        lock = self._entry_lock(key)
        await self._wait_for(lock, on_wait=None, what="fetching this instance", byte=_FETCH)
        try:
            found = await self._disk(self._find, key)
            if found is not None and found.entry.path.name in self._damaged:
                found = None  # damaged, and open elsewhere so not deleted: replaced by the fetch
            if found is not None and key not in self._index:
                self._index[key] = found.entry
            yield found is None
        finally:
            self._locks.release(lock, exclusive=True, byte=_FETCH)

    @asynccontextmanager
    async def exclusive(self, name: str, on_wait: Callable[[], None]) -> AsyncIterator[None]:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
        lock = self._lock_dir / "series" / f"{digest}.lock"
        await self._wait_for(lock, on_wait=on_wait, what="reading this series ahead")
        try:
            yield
        finally:
            self._locks.release(lock, exclusive=True)

    async def _wait_for(self, lock: Path, on_wait: Callable[[], None] | None, what: str, byte: int = 0) -> None:
        """Take ``lock`` exclusively, looking again and again while another host holds it."""
        patience = _Patience(self.wait_bound, what)

        def take() -> bool:
            return self._locks.try_lock(lock, True, byte=byte)

        def undo(got: bool) -> None:
            if got:
                self._locks.release(lock, True, byte=byte)

        while not await self._disk(take, undo=undo):
            if on_wait is not None:
                on_wait()
            await patience.wait()

    def _take_elsewhere(self, key: str) -> bool:
        lock = self._entry_lock(key)
        if not self._locks.try_lock(lock, exclusive=True, byte=_FETCH):
            return False  # another host is fetching it
        try:
            published = self._find(key) is not None
        except BaseException:
            self._locks.release(lock, exclusive=True, byte=_FETCH)
            raise
        if published:
            self._locks.release(lock, exclusive=True, byte=_FETCH)
            return False  # another host has published it
        return True

    def _release_elsewhere(self, key: str) -> None:
        self._locks.release(self._entry_lock(key), exclusive=True, byte=_FETCH)

    def _index_now(self, uid: str, entry: CachedFile, arrival: Arrival | None = None) -> None:
        super()._index_now(uid, entry, arrival)
        self._verified.add(entry_key(uid))
        self._damaged.discard(entry.path.name)
        self._published_since_scan += entry.size

    # --- eviction: one janitor at a time -------------------------------------------------------

    def _needs_eviction(self, free: int) -> bool:
        overdue = self._published_since_scan and trio.current_time() - self._scanned_at >= _SCAN_INTERVAL
        return bool(overdue) or self.total_bytes > self.max_bytes or free < self.min_free_space

    async def _index_published(self, uid: str, entry: CachedFile, free: int) -> None:
        self._index_now(uid, entry)
        if self._needs_eviction(free):
            self._evict_soon(free)  # a janitor's walk never holds up a download

    async def _evict(self, free: int | None = None, target: int | None = None) -> None:
        bound = self.max_bytes if target is None else target
        self._janitor_bound = bound if self._janitor_bound is None else min(self._janitor_bound, bound)
        if self._janitor_running:
            return  # it runs once more: what was open when it looked may be closed now
        self._janitor_running = True
        try:
            while self._janitor_bound is not None:
                bound, self._janitor_bound = self._janitor_bound, None
                await self._run_janitor(bound)
        finally:
            self._janitor_running = False

    async def _run_janitor(self, bound: int) -> None:
        pinned = frozenset(self._pins)
        result = await trio.to_thread.run_sync(self._janitor, bound, pinned, limiter=disk_limiter)
        if result is None:
            return  # another host is the janitor now
        total, evicted = result
        for key in evicted:
            if key in self._index:
                self._remove(key)
        self.total_bytes = total
        self._scanned_at = trio.current_time()
        self._published_since_scan = 0

    def _janitor(self, bound: int, pinned: frozenset[str]) -> tuple[int, list[str]] | None:
        """In a thread, holding ``janitor.lock``: delete the least recently used entries that
        no one holds until the total is within ``bound`` (and the free space above the minimum),
        and the temporary files of daemons that are gone. None if another host holds it."""
        janitor = self._base / "janitor.lock"
        if not self._locks.try_lock(janitor, exclusive=True, alone=True):
            return None
        try:
            entries = []
            for item in self._list_entries():
                try:
                    entries.append((item.entry.path.stat().st_mtime, item))
                except OSError:
                    continue
            entries.sort(key=lambda pair: pair[0])
            total = sum(item.entry.size for _, item in entries)
            free = free_bytes(self._base)
            evicted: list[str] = []
            for _, item in entries:
                if total <= bound and free >= self.min_free_space:
                    break
                if item.key in pinned or not self._delete_unheld(item):
                    continue
                total -= item.entry.size
                free += item.entry.size
                evicted.append(item.key)
            if evicted:
                log.debug("the janitor evicted %d shared cache files", len(evicted))
            self._reap_parts()
            return total, evicted
        finally:
            self._locks.release(janitor, exclusive=True)

    def _delete_unheld(self, item: _Found) -> bool:
        """Delete an entry and its lock file unless someone reads or fetches it (both bytes of
        its lock taken exclusively, neither held by this daemon)."""
        lock = self._entry_lock(item.key)
        if not self._locks.try_lock(lock, exclusive=True, alone=True, byte=_READ):
            return False  # open somewhere
        try:
            if not self._locks.try_lock(lock, exclusive=True, alone=True, byte=_FETCH):
                return False  # being fetched again
            try:
                item.entry.path.unlink(missing_ok=True)
            finally:
                self._locks.release(lock, exclusive=True, delete=True, byte=_FETCH)
        finally:
            self._locks.release(lock, exclusive=True, byte=_READ)
        return True

    def _reap_parts(self) -> None:
        """Delete the ``.part`` files of daemons whose usage lock nobody holds (they died)."""
        owners: dict[str, list[Path]] = {}
        for part in self._tmp.iterdir():
            owners.setdefault(part.name.rsplit(".", 2)[0], []).append(part)
        for owner, parts in owners.items():
            if owner == self._owner:
                continue
            usage = self._usage / owner
            if self._locks.try_lock(usage, exclusive=True, alone=True):
                try:
                    for part in parts:
                        part.unlink(missing_ok=True)
                finally:
                    self._locks.release(usage, exclusive=True, delete=True)

    async def clear(self) -> None:
        """Evict every entry no host holds."""
        await self._evict(target=0)

