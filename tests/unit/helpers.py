"""Building a FileSystem core over the embedded PACS, without FUSE."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from trolleyfs.backends.registry import Backends
from trolleyfs.cache import InstanceCache
from trolleyfs.config import load_config
from trolleyfs.daemon import search_deadline
from trolleyfs.fs.core import FileSystem
from trolleyfs.fs.tree import ROOT_INODE, Node
from trolleyfs.testing.pacs import EmbeddedPacs
from trolleyfs.trolley import Trolley


@asynccontextmanager
async def filesystem_over(pacs: EmbeddedPacs, cache_dir: Path, **options: object):
    config = load_config({"source": pacs.dicomweb_url, "cache_dir": str(cache_dir), **options}, environ={})
    async with AsyncExitStack() as stack:
        backends = Backends(config, stack)
        cache = await InstanceCache.open(config.resolved_cache_dir, config.cache_size, config.min_free_space)
        trolley = Trolley(
            backends.searcher, backends.downloader, cache,
            listing_ttl=config.listing_ttl, search_deadline=search_deadline(config),
        )
        await stack.enter_async_context(trolley.background_work())
        yield FileSystem(
            trolley, root_listing_limit=config.root_listing_limit, listing_ttl=config.listing_ttl,
            readahead_max=config.readahead_max, listing_readahead=config.listing_readahead,
        )


async def listdir(fs: FileSystem, inode: int) -> dict[str, Node]:
    handle = await fs.opendir(inode)
    try:
        return {name: node for name, node, _ in fs.readdir(handle, 0)}
    finally:
        fs.releasedir(handle)


async def walk(fs: FileSystem, path: str) -> Node:
    node = fs.getattr(ROOT_INODE)
    for name in filter(None, path.split("/")):
        node = await fs.lookup(node.inode, name)
    return node


async def all_files(fs: FileSystem) -> dict[str, Node]:
    """Every instance file by path, found by listing (as ls -R would)."""
    files: dict[str, Node] = {}

    async def visit(node: Node, path: str) -> None:
        for name, child in (await listdir(fs, node.inode)).items():
            if child.key.kind.is_dir:
                await visit(child, f"{path}/{name}")
            elif name.endswith(".dcm"):
                files[f"{path}/{name}"] = child

    await visit(await walk(fs, "/patients"), "/patients")
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
