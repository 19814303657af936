"""Record locks (``fcntl``) on lock files that processes on many hosts share: one descriptor per
lock file per table, its holders counted.

The locks are Linux's open-file-description locks (``F_OFD_SETLK``): POSIX record locks (which
NFSv4, CephFS, Lustre and FUSE filesystems such as GlusterFS pass to their lock managers) owned
by an open file rather than by a process, so that closing another descriptor of the file does not
drop them, and two tables in one process exclude each other as two processes do (the tests run
two caches in one process). A table keeps one descriptor per lock file, counts the holders that
share it (readers share; a fetch is exclusive, and may be taken again by the same owner), and
asks the kernel only when the table's mode changes. The kernel releases them all when the process
dies (and a cluster filesystem's lock manager, when its client's host does), which is what lets
another host take over a dead host's fetch.

A lock is one byte of its file (``byte``): the shared cache locks byte 0 to read an entry and
byte 1 to fetch it, so that readers and a fetcher do not wait for each other while a janitor
(who takes both) waits for either. Each (file, byte) has its own descriptor.

A lock file may be deleted by whoever holds it exclusively (the janitor, with the entry it
guards). A locker therefore checks, once it holds the lock, that the name still leads to the file
it locked, and starts again on the new file if not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

_FLOCK = "hhxxxxqqixxxx"
"""struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (0 for an OFD lock)."""
_ATTEMPTS = 8
"""Times a lock is tried again after its file was replaced under it (a janitor deleting it)."""


@dataclass
class _Held:
    fd: int
    shared: int = 0
    exclusive: int = 0


class RecordLocks:
    """Non-blocking record locks by lock-file path, safe to use from several threads."""

    def __init__(self) -> None:
        self._held: dict[tuple[Path, int], _Held] = {}
        self._mutex = threading.Lock()

    def try_lock(self, path: Path, exclusive: bool, *, alone: bool = False, byte: int = 0) -> bool:
        """Take ``path``'s lock, shared or exclusive, without waiting: False when another process
        holds it in a conflicting mode (or, with ``alone``, when this table holds it at all: the
        janitor must not evict what its own daemon reads)."""
        with self._mutex:
            held = self._held.get((path, byte))
            if held is not None:
                if alone:
                    return False
                if exclusive and not held.exclusive and not _lock(held.fd, True, byte):
                    return False  # this table reads it; another one does too
                if exclusive:
                    held.exclusive += 1
                else:
                    held.shared += 1
                return True
            fd = _locked_fd(path, exclusive, byte)
            if fd is None:
                return False
            self._held[(path, byte)] = _Held(fd, shared=0 if exclusive else 1, exclusive=1 if exclusive else 0)
            return True

    def release(self, path: Path, exclusive: bool, *, delete: bool = False, byte: int = 0) -> None:
        """Give back one hold; the kernel's lock goes with the last (an exclusive one turns shared
        while readers in this process remain). With ``delete`` (the last, exclusive holder only),
        the lock file is removed first, while still locked."""
        with self._mutex:
            held = self._held[(path, byte)]
            if exclusive:
                held.exclusive -= 1
            else:
                held.shared -= 1
            if held.exclusive or held.shared:
                if exclusive and not held.exclusive:
                    _lock(held.fd, False, byte)  # a conversion down never waits
                return
            del self._held[(path, byte)]
            if delete:
                path.unlink(missing_ok=True)
            os.close(held.fd)

    def holds(self, path: Path, byte: int = 0) -> bool:
        with self._mutex:
            return (path, byte) in self._held


def _lock(fd: int, exclusive: bool, byte: int) -> bool:
    request = struct.pack(_FLOCK, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: someone else holds it
        return False
    return True


def _locked_fd(path: Path, exclusive: bool, byte: int) -> int | None:
    """A descriptor of ``path`` (created if missing) holding its lock, or None if it is taken."""
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not _lock(fd, exclusive, byte):
                os.close(fd)
                return None
            mine = os.fstat(fd)
            now = os.stat(path)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ESTALE):
                continue  # deleted under us by its last holder: lock the new one
            raise
        except BaseException:
            os.close(fd)
            raise
        if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)
    return None
