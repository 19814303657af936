"""The Trolley: a searcher and a downloader integrated over the disk cache.

- Searches are cached for ``listing_ttl`` seconds (cachetools, on trio's clock) and concurrent
  identical searches share one request.
- ``instance_file`` makes sure one instance is in the cache; concurrent requests for the same
  instance share one download.
- ``download`` fetches whatever a reference names. When the downloader can only fetch single
  instances (NeedsInstances), the instance UIDs are asked of the searcher once per series.
- ``prefetch_searches`` runs searches in the background, two at a time, so that their answers are
  cached when a reader lists them (a study's series listings, which ``ls -lR`` and file managers
  open one after the other).
- ``read_ahead`` downloads a whole series in the background (inside ``background_work``); while
  it runs, a request for one of its instances waits for that instance to arrive instead of
  fetching it a second time, and falls back to its own download if the read-ahead ends without it.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import cachetools
import trio

from trolleyfs.backends.base import Downloader, InstanceWriter, Searcher
from trolleyfs.cache import CachedFile, InstanceCache, Writer
from trolleyfs.errors import CacheFull, NeedsInstances, PacsError, PacsProtocolError, UnrequestedInstance, first_error
from trolleyfs.model import (
    InstanceReference,
    Query,
    QueryLevel,
    Reference,
    SeriesReference,
    Studies,
    StudyReference,
)
from trolleyfs.outage import Outage
from trolleyfs.singleflight import SingleFlight

log = logging.getLogger(__name__)

_PREFETCH_WORKERS = 2
STAT_NAMES = (
    "searches", "download_requests", "instances_downloaded", "bytes_downloaded", "cache_hits", "read_aheads",
    "listings_truncated", "instances_refused",
)


@dataclass
class _ReadAhead:
    waiters: dict[str, trio.Event] = field(default_factory=dict)
    """Instances someone waits for, by SOPInstanceUID."""


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
        self._answers: cachetools.TTLCache[Query, Studies] = cachetools.TTLCache(
            maxsize=4096, ttl=listing_ttl, timer=trio.current_time
        )
        self._searches: SingleFlight[Studies] = SingleFlight()
        self._cut: cachetools.LRUCache[Query, bool] = cachetools.LRUCache(maxsize=4096)
        """Searches whose answer was cut, each logged and counted once."""
        self._downloads: SingleFlight[CachedFile] = SingleFlight()
        self._download_limiter = trio.CapacityLimiter(parallel_downloads)
        self._read_aheads: dict[str, _ReadAhead] = {}
        self._prefetching: set[Query] = set()
        self._prefetch_queue: deque[Query] = deque()
        self._prefetch_workers = 0
        self._nursery: trio.Nursery | None = None
        self.outage = Outage()

    @asynccontextmanager
    async def background_work(self) -> AsyncIterator[Trolley]:
        """Let read-aheads run for as long as the block lasts; they are cancelled when it ends."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def find_studies(self, query: Query) -> Studies:
        """The searcher's answer to ``query``, from the listing cache while it is fresh."""
        if (answer := self._answers.get(query)) is not None:
            return answer
        return await self._searches.run(query, lambda: self._search(query))

    async def _search(self, query: Query) -> Studies:
        """One search. A query with a limit asks for one more result than the limit, so that an
        answer cut by it is known to be cut (and says so) rather than passed off as whole."""
        self.stats["searches"] += 1
        asked = query.model_copy(update={"limit": query.limit + 1}) if query.limit else query
        try:
            with trio.fail_after(self.search_deadline):
                found = await self.searcher.find_studies(asked)
        except trio.TooSlowError as exc:
            raise PacsError(f"search took longer than {self.search_deadline:g}s at {query.query_level.value} level") from exc
        self.outage.answered()
        answer = found if isinstance(found, Studies) else Studies(found)
        if query.limit and len(answer) > query.limit:
            answer = Studies(answer[: query.limit], f"cut at its limit of {query.limit} studies")
        if answer.truncated and query not in self._cut:
            self._cut[query] = True  # once per listing, not at every refresh of it
            self.stats["listings_truncated"] += 1
            keys = ", ".join(sorted(query.matching_keys())) or "no keys"
            log.warning("a %s-level search (%s) is incomplete: %s", query.query_level.value, keys, answer.truncated)
        self._answers[query] = answer
        return answer

    def prefetch_searches(self, queries: list[Query]) -> None:
        """Queue ``queries`` for searching in the background, in order, two at a time; those
        answered or queued already are skipped."""
        if self._nursery is None:
            return
        for query in queries:
            if query not in self._answers and query not in self._prefetching:
                self._prefetching.add(query)
                self._prefetch_queue.append(query)
        while self._prefetch_workers < _PREFETCH_WORKERS and self._prefetch_queue:
            self._prefetch_workers += 1
            self._nursery.start_soon(self._prefetch_worker)

    async def _prefetch_worker(self) -> None:
        try:
            while self._prefetch_queue:
                query = self._prefetch_queue.popleft()
                try:
                    await self.find_studies(query)
                except Exception as exc:  # only an optimisation: a reader asking later sees its own error
                    log.info("background search failed: %s", exc)
                finally:
                    self._prefetching.discard(query)
        finally:
            self._prefetch_workers -= 1

    def forget_searches(self) -> None:
        self._answers.clear()

    def open_cached(self, uid: str) -> tuple[int, CachedFile] | None:
        """A pinned read-only descriptor on the cached file of ``uid`` (see
        ``InstanceCache.open_for_reading``), or None when it is not cached."""
        opened = self.cache.open_for_reading(uid)
        if opened is not None:
            self.stats["cache_hits"] += 1
        return opened

    async def instance_file(self, reference: InstanceReference) -> CachedFile:
        """The cached file of one instance, downloading it first if needed."""
        while (read_ahead := self._read_aheads.get(reference.series_uid)) is not None:
            if self.cache.get(reference.instance_uid) is not None:
                break
            await read_ahead.waiters.setdefault(reference.instance_uid, trio.Event()).wait()
        return await self._cached_or_downloaded(reference)

    async def _cached_or_downloaded(self, reference: InstanceReference) -> CachedFile:
        if (cached := self.cache.get(reference.instance_uid)) is not None:
            self.stats["cache_hits"] += 1
            return cached
        return await self._downloads.run(reference.instance_uid, lambda: self._download_instance(reference))

    async def _download_instance(self, reference: InstanceReference) -> CachedFile:
        async with self._download_limiter:
            try:
                await self._fetch(reference)
            except CacheFull:
                # The disk filled up under the cache (other files, or bounds set too high): make
                # room by dropping everything not open, and try once more before giving up.
                log.warning("cache disk full: evicting every file not open and retrying")
                await self.cache.clear()
                await self._fetch(reference)
        cached = self.cache.get(reference.instance_uid)
        if cached is None:
            raise PacsProtocolError(f"download of {reference.instance_uid} left nothing in the cache")
        return cached

    @property
    def downloads_in_flight(self) -> int:
        return self._downloads.in_flight_count + len(self._read_aheads)

    def read_ahead(self, series: SeriesReference) -> None:
        """Start downloading ``series`` in the background, unless that is already under way."""
        if self._nursery is None or series.series_uid in self._read_aheads:
            return
        self._read_aheads[series.series_uid] = _ReadAhead()
        self._nursery.start_soon(self._run_read_ahead, series)

    async def _run_read_ahead(self, series: SeriesReference) -> None:
        self.stats["read_aheads"] += 1
        try:
            await self.download(series)
        except Exception as exc:  # a read-ahead is an optimisation: its failure must not end the mount
            log.info("read-ahead of series %s failed: %s", series.series_uid, exc)
        finally:
            state = self._read_aheads.pop(series.series_uid)
            for event in state.waiters.values():
                event.set()

    def _arrived(self, uid: str) -> None:
        for state in self._read_aheads.values():
            if (event := state.waiters.pop(uid, None)) is not None:
                event.set()

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
        """For a downloader that fetches named instances: find them (from the listing cache when
        it can), then offer each series with its uncached instances named (RAD-69 fetches those in
        batches); a downloader that takes single instances only gets them one by one, in parallel."""
        query = Query(
            StudyInstanceUID=reference.study_uid,
            SeriesInstanceUID=reference.series_uid if isinstance(reference, SeriesReference) else "",
            query_level=QueryLevel.INSTANCE,
        )
        for study in await self.find_studies(query):
            for series in study.series:
                instances = [i.reference for i in series.instances if i.uid not in self.cache]
                if not instances:
                    continue
                named = SeriesReference(
                    study_uid=study.uid, series_uid=series.uid,
                    sop_class_uids=tuple(sorted({i.sop_class_uid for i in instances if i.sop_class_uid})),
                    instance_uids=tuple(i.instance_uid for i in instances),
                )
                try:
                    await self._fetch(named)
                except NeedsInstances:
                    with first_error():
                        async with trio.open_nursery() as nursery:
                            for instance in instances:
                                nursery.start_soon(self._cached_or_downloaded, instance)

    async def _fetch(self, reference: Reference) -> None:
        """Run the downloader; instances it delivers are published while it goes on streaming."""
        try:
            with first_error():
                async with trio.open_nursery() as nursery:
                    await self.downloader.fetch(reference, _PublishingSink(self, nursery))
        except NeedsInstances:
            raise  # nothing was asked of the PACS
        except BaseException:
            self.stats["download_requests"] += 1
            raise
        self.stats["download_requests"] += 1
        self.outage.answered()


class _PublishingSink:
    """The cache as a downloader sees it. Finishing a file (identifying and renaming it, ~1 ms of
    disk work) happens in the background, at most ``_PUBLISH_AHEAD`` files at a time, so that the
    network stream is not held up; the enclosing ``_fetch`` waits for all of them."""

    _PUBLISH_AHEAD = 4

    def __init__(self, trolley: Trolley, nursery: trio.Nursery) -> None:
        self._trolley = trolley
        self._nursery = nursery
        self._slots = trio.Semaphore(self._PUBLISH_AHEAD)

    @asynccontextmanager
    async def receive(self, expected: Reference | None = None) -> AsyncIterator[InstanceWriter]:
        cache = self._trolley.cache
        writer = cache.new_writer()
        try:
            yield writer
        except BaseException:
            await cache.discard(writer)
            raise
        await self._slots.acquire()
        self._nursery.start_soon(self._publish, writer, expected)

    async def _publish(self, writer: Writer, expected: Reference | None) -> None:
        """Publish one received file. An instance outside a study or series that was asked for
        is left out (and counted), the rest of the answer still cached; a single instance asked
        for that turns out to be another is the download's error."""
        try:
            await self._trolley.cache.publish(writer, expected)
        except UnrequestedInstance as exc:
            if expected is None or isinstance(expected, InstanceReference):
                raise
            log.warning("%s; not cached", exc)
            self._trolley.stats["instances_refused"] += 1
            return
        finally:
            self._slots.release()
        stats = self._trolley.stats
        stats["instances_downloaded"] += 1
        stats["bytes_downloaded"] += writer.size
        self._trolley._arrived(writer.uid)
