"""Building a FileSystem core over the embedded PACS, without FUSE."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from trolleyfs.config import load_config
from trolleyfs.fs.core import FileSystem
from trolleyfs.fs.nodes import ROOT_INODE, Node
from trolleyfs.mount import open_filesystem
from trolleyfs.testing.pacs import EmbeddedPacs


@asynccontextmanager
async def filesystem_over(pacs: EmbeddedPacs, cache_dir: Path, **options: object):
    config = load_config({"source": pacs.dicomweb_url, "cache_dir": str(cache_dir), **options}, environ={})
    async with open_filesystem(config) as fs:
        yield fs


async def listdir(fs: FileSystem, inode: int) -> dict[str, Node]:
    handle = await fs.opendir(inode)
    try:
        entries = fs.readdir(handle, 0)
        for _, node, _ in entries:
            fs.handed_to_kernel(node)  # as the adapter does for each entry it replies
        return {name: node for name, node, _ in entries}
    finally:
        fs.releasedir(handle)


async def walk(fs: FileSystem, path: str) -> Node:
    node = fs.getattr(ROOT_INODE)
    for name in filter(None, path.split("/")):
        node = await fs.lookup(node.inode, name)
    return node


async def all_files(fs: FileSystem, view: str = "/patients") -> dict[str, Node]:
    """Every instance file of a view by path, found by listing (as ls -R would)."""
    files: dict[str, Node] = {}

    async def visit(node: Node, path: str) -> None:
        for name, child in (await listdir(fs, node.inode)).items():
            if child.is_dir:
                await visit(child, f"{path}/{name}")
            elif name.endswith(".dcm"):
                files[f"{path}/{name}"] = child

    await visit(await walk(fs, view), view)
    return files


async def read_all(fs: FileSystem, inode: int) -> bytes:
    handle, _ = await fs.open(inode, writable=False)
    try:
        chunks = []
        offset = 0
        while chunk := await fs.read(handle, offset, 65536):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        fs.release(handle)
