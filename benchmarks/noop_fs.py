"""The floor of any pyfuse3 daemon: a read-only mount of a flat folder that does nothing but
answer — ``open`` opens the backing file, ``read`` is one ``os.pread`` on the event loop, with
``keep_cache`` and the same kernel read-ahead window as trolleyfs. Run as its own process (a
process reading through a mount it serves deadlocks):
``python benchmarks/noop_fs.py SOURCE_DIR MOUNTPOINT`` (it prints ``ready`` once mounted).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trolleyfs.daemon import set_read_ahead  # noqa: E402


class NoopFs(pyfuse3.Operations):
    def __init__(self, source: Path) -> None:
        super().__init__()
        self.names = {name.encode(): inode for inode, name in enumerate(sorted(os.listdir(source)), start=2)}
        self.paths = {inode: source / name.decode() for name, inode in self.names.items()}
        self.sizes = {inode: path.stat().st_size for inode, path in self.paths.items()}

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.st_mode = (stat.S_IFDIR | 0o555) if inode == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o444)
        entry.st_size = self.sizes.get(inode, 0)
        entry.attr_timeout = entry.entry_timeout = 300
        return entry

    async def getattr(self, inode, ctx=None):  # noqa: ANN001, ANN201
        return self._attributes(inode)

    async def lookup(self, parent_inode, name, ctx=None):  # noqa: ANN001, ANN201
        if parent_inode != pyfuse3.ROOT_INODE or name not in self.names:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(self.names[name])

    async def opendir(self, inode, ctx):  # noqa: ANN001, ANN201
        return inode

    async def readdir(self, handle, start, token):  # noqa: ANN001, ANN201
        for index, (name, inode) in enumerate(list(self.names.items())[start:], start=start + 1):
            if not pyfuse3.readdir_reply(token, name, self._attributes(inode), index):
                return

    async def open(self, inode, flags, ctx):  # noqa: ANN001, ANN201
        return pyfuse3.FileInfo(fh=os.open(self.paths[inode], os.O_RDONLY), keep_cache=True)

    async def read(self, handle, offset, size):  # noqa: ANN001, ANN201
        return os.pread(handle, size, offset)

    async def release(self, handle):  # noqa: ANN001, ANN201
        os.close(handle)


async def serve(source: Path, mountpoint: Path) -> None:
    pyfuse3.init(NoopFs(source), str(mountpoint), {"ro", "fsname=noop", "subtype=noop"})
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            await set_read_ahead(mountpoint, 1024)
            print("ready", flush=True)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    trio.run(serve, Path(sys.argv[1]), Path(sys.argv[2]))
