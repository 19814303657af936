"""The Trolley: a searcher and a downloader integrated over the disk cache.

- Searches are cached for ``listing_ttl`` seconds (cachetools, on trio's clock) and concurrent
  identical searches share one request.
- ``instance_file`` makes sure one instance is in the cache; concurrent requests for the same
  instance share one download.
- ``download`` fetches whatever a reference names. When the downloader can only fetch single
  instances (NeedsInstances), the instance UIDs are asked of the searcher once per series.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import cachetools
import trio

from trolleyfs.backends.base import Downloader, InstanceWriter, Searcher
from trolleyfs.cache import CachedFile, InstanceCache
from trolleyfs.errors import NeedsInstances, PacsError, PacsProtocolError
from trolleyfs.model import (
    InstanceReference,
    Query,
    QueryLevel,
    Reference,
    SeriesReference,
    Study,
    StudyReference,
)
from trolleyfs.singleflight import SingleFlight

log = logging.getLogger(__name__)

STAT_NAMES = ("searches", "download_requests", "instances_downloaded", "bytes_downloaded", "cache_hits")


class Trolley:
    def __init__(
        self,
        searcher: Searcher,
        downloader: Downloader,
        cache: InstanceCache,
        *,
        listing_ttl: float = 60.0,
        search_deadline: float = 120.0,
        parallel_downloads: int = 4,
    ) -> None:
        self.searcher = searcher
        self.downloader = downloader
        self.cache = cache
        self.search_deadline = search_deadline
        self.stats: Counter[str] = Counter(dict.fromkeys(STAT_NAMES, 0))
        self._answers: cachetools.TTLCache[Query, list[Study]] = cachetools.TTLCache(
            maxsize=4096, ttl=listing_ttl, timer=trio.current_time
        )
        self._searches: SingleFlight[list[Study]] = SingleFlight()
        self._downloads: SingleFlight[CachedFile] = SingleFlight()
        self._download_limiter = trio.CapacityLimiter(parallel_downloads)

    async def find_studies(self, query: Query) -> list[Study]:
        """The searcher's answer to ``query``, from the listing cache while it is fresh."""
        if (answer := self._answers.get(query)) is not None:
            return answer
        return await self._searches.run(query, lambda: self._search(query))

    async def _search(self, query: Query) -> list[Study]:
        self.stats["searches"] += 1
        try:
            with trio.fail_after(self.search_deadline):
                answer = await self.searcher.find_studies(query)
        except trio.TooSlowError as exc:
            raise PacsError(f"search took longer than {self.search_deadline:g}s: {query!r}") from exc
        self._answers[query] = answer
        return answer

    def forget_searches(self) -> None:
        self._answers.clear()

    async def instance_file(self, reference: InstanceReference) -> CachedFile:
        """The cached file of one instance, downloading it first if needed."""
        if (cached := self.cache.get(reference.instance_uid)) is not None:
            self.stats["cache_hits"] += 1
            return cached
        return await self._downloads.run(reference.instance_uid, lambda: self._download_instance(reference))

    async def _download_instance(self, reference: InstanceReference) -> CachedFile:
        async with self._download_limiter:
            await self._fetch(reference)
        cached = self.cache.get(reference.instance_uid)
        if cached is None:
            raise PacsProtocolError(f"download of {reference.instance_uid} left nothing in the cache")
        return cached

    async def download(self, reference: Reference) -> None:
        """Make sure every instance ``reference`` names is in the cache."""
        if isinstance(reference, InstanceReference):
            await self.instance_file(reference)
            return
        try:
            await self._fetch(reference)
        except NeedsInstances:
            await self._download_instance_by_instance(reference)

    async def _download_instance_by_instance(self, reference: StudyReference | SeriesReference) -> None:
        query = Query(
            StudyInstanceUID=reference.study_uid,
            SeriesInstanceUID=reference.series_uid if isinstance(reference, SeriesReference) else "",
            query_level=QueryLevel.INSTANCE,
        )
        instances = [
            instance.reference
            for study in await self.find_studies(query)
            for series in study.series
            for instance in series.instances
        ]
        async with trio.open_nursery() as nursery:
            for instance in instances:
                nursery.start_soon(self.instance_file, instance)

    async def _fetch(self, reference: Reference) -> None:
        self.stats["download_requests"] += 1
        await self.downloader.fetch(reference, _CountingSink(self))


class _CountingSink:
    """The cache as seen by a downloader, counting what arrives."""

    def __init__(self, trolley: Trolley) -> None:
        self._trolley = trolley

    @asynccontextmanager
    async def receive(self, expected_uid: str | None = None) -> AsyncIterator[InstanceWriter]:
        async with self._trolley.cache.receive(expected_uid) as writer:
            yield writer
        self._trolley.stats["instances_downloaded"] += 1
        self._trolley.stats["bytes_downloaded"] += writer.size
