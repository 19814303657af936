"""The pyfuse3 adapter: links kernel requests to :class:`~trolleyfs.fs.core.FileSystem`.

This is the one errno boundary. A TrolleyError becomes ``FUSEError(its errno)``, logged at the
level the core gives it (an expected ENOENT at DEBUG, a failing PACS once per outage); an OSError
of our own internals becomes EIO with a log line, not its raw errno; anything else is logged with
its traceback and becomes EIO, so that no exception can end the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from trolleyfs.errors import NotFound, TrolleyError
from trolleyfs.fs.core import FileSystem
from trolleyfs.fs.nodes import Node

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def errno_boundary(handler: F) -> F:
    @functools.wraps(handler)
    async def guarded(self: FuseOperations, *args: Any) -> Any:
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except TrolleyError as exc:
            log.log(self.fs.log_level_of(exc), "%s: %s", handler.__name__, exc)
            failed = exc.errno
        except OSError as exc:  # our own internals (the cache directory): no raw errno leaks out
            log.warning("%s: internal error, answered EIO: %s", handler.__name__, exc)
            failed = errno.EIO
        except Exception:
            log.exception("%s failed unexpectedly", handler.__name__)
            failed = errno.EIO
        self.fs.count_error(failed)
        raise pyfuse3.FUSEError(failed)

    return guarded  # type: ignore[return-value]


class FuseOperations(pyfuse3.Operations):
    def __init__(self, filesystem: FileSystem, uid: int | None = None, gid: int | None = None, umask: int = 0o022) -> None:
        super().__init__()
        self.fs = filesystem
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._umask = umask

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.st_mode = node.mode & ~self._umask
        attrs.st_nlink = 2 if node.is_dir else 1
        attrs.st_size = node.size
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.st_blksize = 128 * 1024
        attrs.st_blocks = (node.size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = int(node.mtime * 1e9)
        attrs.attr_timeout = self.fs.attr_timeout(node)
        attrs.entry_timeout = self.fs.listing_ttl
        return attrs

    @errno_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        try:
            node = await self.fs.lookup(parent_inode, os.fsdecode(name))
        except NotFound as exc:
            log.debug("lookup: %s", exc)
            # inode 0 is FUSE's "no such entry", which the kernel keeps like a listing
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.fs.listing_ttl
            return negative
        entry = self._entry(node)
        self.fs.handed_to_kernel(node)
        return entry

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        # the kernel expects no reply, not even an error: nothing may leave this handler
        try:
            for inode, count in inode_list:
                self.fs.forget(inode, count)
        except Exception:
            log.exception("forget failed")

    @errno_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.getattr(inode))

    @errno_boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        return await self.fs.opendir(inode)

    @errno_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for name, node, next_id in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(node), next_id):
                break
            self.fs.handed_to_kernel(node)  # readdirplus: each entry sent counts as a lookup

    @errno_boundary
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @errno_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & (os.O_TRUNC | os.O_APPEND))
        handle, direct_io = await self.fs.open(inode, writable)
        return pyfuse3.FileInfo(fh=handle, direct_io=direct_io, keep_cache=not direct_io)

    @errno_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.fs.read(fh, off, size)

    @errno_boundary
    async def release(self, fh: int) -> None:
        self.fs.release(fh)

    @errno_boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        stat = pyfuse3.StatvfsData()
        stat.f_bsize = stat.f_frsize = 4096
        stat.f_namemax = 255
        return stat

    @errno_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return await self.fs.getxattr(inode, os.fsdecode(name))

    @errno_boundary
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [os.fsencode(name) for name in await self.fs.listxattr(inode)]

    async def _refuse(self, what: str) -> Any:
        self.fs.refuse_change(what)

    @errno_boundary
    async def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("setattr")

    @errno_boundary
    async def mknod(self, parent_inode, name, mode, rdev, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("mknod")

    @errno_boundary
    async def mkdir(self, parent_inode, name, mode, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("mkdir")

    @errno_boundary
    async def create(self, parent_inode, name, mode, flags, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("create")

    @errno_boundary
    async def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
        await self._refuse("write")

    @errno_boundary
    async def unlink(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("unlink")

    @errno_boundary
    async def rmdir(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("rmdir")

    @errno_boundary
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("rename")

    @errno_boundary
    async def symlink(self, parent_inode, name, target, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("symlink")

    @errno_boundary
    async def link(self, inode, new_parent_inode, new_name, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("link")

    @errno_boundary
    async def setxattr(self, inode, name, value, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("setxattr")

    @errno_boundary
    async def removexattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
        await self._refuse("removexattr")
