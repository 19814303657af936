"""The filesystem's operations as plain async methods over the node tree. Never imports pyfuse3.

    /patients /studies /accession /dates /query    the views (trolleyfs.fs.views)
    /.trolleyfs/stats                              counters of the running mount, as JSON

The core finds nodes by inode and asks them: a directory for its entries or one name, a file to
open, any node for its xattrs. Every error is raised as a :class:`~trolleyfs.errors.TrolleyError`
carrying its errno; the adapter decides nothing.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import time
from collections import Counter
from typing import Any

import trio

from trolleyfs.errors import (
    IsADirectory, NoAttribute, NotADirectory, NotFound, PacsError, PacsRefused, ReadOnly, TrolleyError,
)
from trolleyfs.fs.dicom import DICOM_TREE
from trolleyfs.fs.generated import GeneratedFile
from trolleyfs.fs.nodes import ROOT_INODE, Directory, File, Mount, Node, OpenFile
from trolleyfs.fs.settings import FsSettings
from trolleyfs.fs.views import VIEWS
from trolleyfs.trolley import Trolley

log = logging.getLogger(__name__)

_read_limiter = trio.CapacityLimiter(8)
CONTROL_DIR = ".trolleyfs"


class _Root(Directory):
    permanent = True

    async def entries(self) -> dict[str, Node]:
        return self.children  # type: ignore[return-value]


class FileSystem:
    def __init__(self, trolley: Trolley, settings: FsSettings | None = None) -> None:
        self.trolley = trolley
        self.settings = settings or FsSettings()
        self.listing_ttl = self.settings.listing_ttl
        self.errors: Counter[str] = Counter()
        self.lookups = 0
        """Names the kernel asked about (it caches answers, found or not, for listing_ttl)."""
        self.mount = Mount(trolley, self.settings, mount_time=time.time(), tree=DICOM_TREE)
        self.inodes = self.mount.inodes
        self.root = _Root(self.mount, ())
        assert self.root.inode == ROOT_INODE
        control = self.root.child(_Root, CONTROL_DIR)
        control.built({"stats": control.child(GeneratedFile, "stats").generated_by(
            self._render_stats, volatile=True, permanent=True)})
        views = {name: self.root.child(view, name) for name, view in VIEWS.items() if view.offered(self.settings)}
        self.root.built({**views, CONTROL_DIR: control})
        self.inodes.keep(self.root)
        self._handles = itertools.count(1)
        self._open_files: dict[int, OpenFile] = {}
        self._open_dirs: dict[int, list[tuple[str, Node]]] = {}

    # --- looking things up -------------------------------------------------------------------

    def getattr(self, inode: int) -> Node:
        node = self.inodes.get(inode)
        if node is None:
            raise NotFound(f"no inode {inode}")
        node.refresh()
        return node

    def attr_timeout(self, node: Node) -> float:
        """How long the kernel may keep a node's attributes: files whose size may still change
        (an estimate, the stats file) are asked again every time."""
        return node.attr_timeout

    async def lookup(self, parent_inode: int, name: str) -> Node:
        self.lookups += 1
        node = await self._directory(parent_inode).lookup(name)
        node.refresh()
        self.inodes.keep(node)  # the adapter hands every answer to the kernel, which counts it
        return node

    def _directory(self, inode: int) -> Directory:
        node = self.getattr(inode)
        if not isinstance(node, Directory):
            raise NotADirectory(f"inode {inode} is not a directory")
        return node

    # --- directories ---------------------------------------------------------------------------

    async def opendir(self, inode: int) -> int:
        entries = await self._directory(inode).entries()
        for node in entries.values():
            node.refresh()
        handle = next(self._handles)
        self._open_dirs[handle] = sorted(entries.items())
        return handle

    def readdir(self, handle: int, start: int) -> list[tuple[str, Node, int]]:
        """Entries from position ``start`` of the listing taken at opendir, with next positions.
        Each entry the caller passes on must be told with ``handed_to_kernel``."""
        entries = self._open_dirs.get(handle, [])
        return [(name, node, index + 1) for index, (name, node) in enumerate(entries) if index >= start]

    def releasedir(self, handle: int) -> None:
        self._open_dirs.pop(handle, None)

    def handed_to_kernel(self, node: Node) -> None:
        """Count a node the kernel was given (see ``InodeTable``); the adapter calls this."""
        self.inodes.handed_to_kernel(node)

    def forget(self, inode: int, count: int) -> None:
        self.inodes.forget(inode, count)

    # --- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, writable: bool) -> tuple[int, bool]:
        """Open a file for reading; returns (handle, direct_io)."""
        if writable:
            raise ReadOnly("trolleyfs is read-only")
        node = self.getattr(inode)
        if not isinstance(node, File):
            raise IsADirectory(f"inode {inode} is a directory")
        opened = await node.open()
        handle = next(self._handles)
        self._open_files[handle] = opened
        return handle, opened.direct_io

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        open_file = self._open_files[handle]
        if open_file.snapshot is not None:
            return open_file.snapshot[offset : offset + size]
        if (arrival := open_file.arrival) is not None and not arrival.complete:
            # still arriving: what has arrived is read at once, beyond it the read waits
            await arrival.wait_for(min(offset + size, arrival.size or 0))
            return os.pread(open_file.fd, size, offset)
        if open_file.just_written:
            return os.pread(open_file.fd, size, offset)
        return await trio.to_thread.run_sync(os.pread, open_file.fd, size, offset, limiter=_read_limiter)

    def release(self, handle: int) -> None:
        open_file = self._open_files.pop(handle, None)
        if open_file is None or open_file.fd is None:
            return
        self.trolley.cache.close_for_reading(open_file.node.uid, open_file.fd)  # type: ignore[attr-defined]

    def refuse_change(self, what: str) -> None:
        raise ReadOnly(f"{what}: trolleyfs is read-only")

    # --- extended attributes -------------------------------------------------------------------

    async def listxattr(self, inode: int) -> list[str]:
        return sorted(await self._xattrs(inode))

    async def getxattr(self, inode: int, name: str) -> bytes:
        values = await self._xattrs(inode)
        if name not in values:
            raise NoAttribute(f"no extended attribute of that name on inode {inode}")
        return values[name]

    async def _xattrs(self, inode: int) -> dict[str, bytes]:
        node = self.getattr(inode)
        return await node.xattrs() if node.tree.attributes_shown else {}

    # --- the stats file ------------------------------------------------------------------------

    def log_level_of(self, error: TrolleyError) -> int:
        """How loud a failed call is: a plain "no such name" at DEBUG; a failing PACS at WARNING
        once per outage (see trolleyfs.outage); anything else at WARNING."""
        if error.errno in (errno.ENOENT, errno.ENODATA):
            return logging.DEBUG
        if isinstance(error, PacsError) and not isinstance(error, PacsRefused):
            return self.trolley.outage.failed()
        return logging.WARNING

    def count_error(self, errno_value: int) -> None:
        """Note an error returned to a program (ENOENT, a plain "no such name", is not one)."""
        if errno_value not in (errno.ENOENT, errno.ENODATA):
            self.errors[errno.errorcode.get(errno_value, str(errno_value))] += 1

    def stats(self) -> dict[str, Any]:
        cache = self.trolley.cache
        return {
            **dict(self.trolley.stats),
            "searcher": self.settings.backend_names[0],
            "downloader": self.settings.backend_names[1],
            "downloads_in_flight": self.trolley.downloads_in_flight,
            "lookups": self.lookups,
            "inodes": len(self.inodes),
            "errors": dict(self.errors),
            "cache_files": len(cache),
            "cache_bytes": cache.total_bytes,
            "cache_max_bytes": cache.max_bytes,
            "open_files": len(self._open_files),
            "derived_files_made": self.mount.derived.made,
        }

    def _render_stats(self) -> bytes:
        return (json.dumps(self.stats(), indent=2, sort_keys=True) + "\n").encode()
