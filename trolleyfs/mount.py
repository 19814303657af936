"""The composition root: one place that builds a mount's filesystem core from a Config, for the
daemon, the tests and the benchmarks alike (backends, cache, trolley with its background work,
the filesystem core over them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from trolleyfs.backends.registry import Backends
from trolleyfs.cache import InstanceCache
from trolleyfs.cache_interface import Cache
from trolleyfs.config import Config
from trolleyfs.derived.deid import DeidOptions, Deidentifier
from trolleyfs.fs.core import FileSystem
from trolleyfs.fs.settings import FsSettings, Naming
from trolleyfs.shared_cache import SharedCache, namespace_of
from trolleyfs.trolley import Trolley


def search_deadline(config: Config) -> float:
    """Bound on one search, retries and backoff included."""
    return config.timeout * (config.retries + 1) * 2 + 5.0


def fs_settings(config: Config) -> FsSettings:
    return FsSettings(
        root_listing_limit=config.root_listing_limit,
        listing_ttl=config.listing_ttl,
        readahead_max=config.readahead_max,
        listing_readahead=config.listing_readahead,
        dates_from=config.dates_from,
        query_limit=config.query_limit,
        preview_size=config.preview_size,
        nifti_timeout=config.nifti_timeout,
        deidentifier=Deidentifier(config.deid_secret, DeidOptions(
            shift_dates=config.deid_shift_dates,
            retain_device_identity=config.deid_retain_device_identity,
            retain_patient_characteristics=config.deid_retain_patient_characteristics,
            burned_in_checked=config.deid_burned_in_checked,
        )) if config.deid_secret else None,
        naming=Naming.from_templates(config.study_name, config.series_name, config.instance_name),
        backend_names=(config.resolved_searcher, config.resolved_downloader),
    )


def _private_cache(config: Config) -> Awaitable[Cache]:
    return InstanceCache.open(config.resolved_cache_dir, config.cache_size, config.min_free_space)


def _shared_cache(config: Config) -> Awaitable[Cache]:
    return SharedCache.open_shared(
        config.resolved_cache_dir, config.cache_namespace or namespace_of(config.source),
        config.cache_size, config.min_free_space,
        timeout=config.timeout, wait_bound=search_deadline(config),
    )


CACHE_MODES: dict[str, Callable[[Config], Awaitable[Cache]]] = {
    "private": _private_cache,
    "shared": _shared_cache,
}


@asynccontextmanager
async def open_filesystem(config: Config) -> AsyncIterator[FileSystem]:
    """The filesystem core of ``config``'s mount, its background work running while the block lasts."""
    async with AsyncExitStack() as stack:
        backends = Backends(config, stack)
        cache = await CACHE_MODES[config.cache_mode](config)
        trolley = Trolley(
            backends.searcher,
            backends.downloader,
            cache,
            listing_ttl=config.listing_ttl,
            search_deadline=search_deadline(config),
        )
        await stack.enter_async_context(trolley.background_work())
        yield FileSystem(trolley, fs_settings(config))
