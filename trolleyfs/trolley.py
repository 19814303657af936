"""The Trolley: a searcher and a downloader integrated over the disk cache.

- Searches are cached for ``listing_ttl`` seconds (cachetools, on trio's clock) and concurrent
  identical searches share one request.
- ``open_instance`` opens one instance's cache file, downloading it first if needed; it returns
  as soon as the file can be read (for an HTTP download with a known size: once its header has
  arrived, the rest readable as it comes). Concurrent opens of the same instance share one
  download, which runs in the background so that it outlives an impatient reader.
- ``download`` fetches whatever a reference names. When the downloader can only fetch single
  instances (NeedsInstances), the instance UIDs are asked of the searcher once per series, and
  those cached or arriving already are not asked for.
- ``prefetch_searches`` runs searches in the background, a few at a time, so that their answers
  are cached when a reader lists them (a study's series listings, which ``ls -lR`` and file
  managers open one after the other).
- ``rendered`` asks the PACS for an image of one instance, when the downloader can (a preview
  without downloading the instance).
- ``read_ahead`` downloads a whole series in the background (inside ``background_work``); at most
  ``_READ_AHEADS`` run at once and, together, within half the cache; the others wait in a short
  queue (the newest kept). While one runs, an open of one of its instances waits for that
  instance to arrive instead of fetching it a second time, and falls back to its own download if
  the read-ahead ends without it. Background work is marked (:mod:`trolleyfs.priority`) so that
  it never takes the connections kept for readers.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import cachetools
import trio

from trolleyfs.backends.base import Downloader, InstanceWriter, PartWriter, Renderer, Searcher
from trolleyfs.cache import Arrival, Writer
from trolleyfs.cache_interface import Cache
from trolleyfs.errors import (
    CacheFull, NeedsInstances, NotFound, PacsError, PacsProtocolError, TrolleyError, UnrequestedInstance, first_error,
)
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
from trolleyfs.priority import background
from trolleyfs.singleflight import SingleFlight

log = logging.getLogger(__name__)

PREFETCH_WORKERS = 4
_READ_AHEADS = 2
"""Series read ahead at once."""
_QUEUED_READ_AHEADS = 16
_SETTLED = "\0settled"
"""The waiters key of ``settled`` (no SOPInstanceUID holds a NUL)."""
STAT_NAMES = (
    "searches", "renders", "download_requests", "instances_downloaded", "bytes_downloaded", "cache_hits", "read_aheads",
    "listings_truncated", "instances_refused", "instances_skipped",
)


@dataclass(eq=False)
class _Flight:
    """A download under way in the background; its error, once it has ended, if it failed."""

    ended: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class Opened:
    """An instance file opened for reading (pinned until ``close_for_reading``)."""

    fd: int
    size: int
    arrival: Arrival | None = None
    """Set while the file is still arriving: reads past what has arrived wait for it."""
    just_written: bool = False


class Trolley:
    def __init__(
        self,
        searcher: Searcher,
        downloader: Downloader,
        cache: Cache,
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
        self._singles: dict[str, _Flight] = {}
        """Downloads of one instance, by SOPInstanceUID."""
        self._waiters: dict[str, trio.Event] = {}
        """Opens waiting for an instance, by SOPInstanceUID: set when it arrives or a download ends."""
        self._download_limiter = trio.CapacityLimiter(parallel_downloads)
        self._read_aheads: dict[str, _Flight] = {}
        self._read_ahead_bytes: dict[str, int] = {}
        self._queued_read_aheads: deque[tuple[SeriesReference, int]] = deque(maxlen=_QUEUED_READ_AHEADS)
        cache.on_arrived = self._arrived
        cache.on_published = self._published
        cache.on_refused = self._refused
        cache.on_skipped = lambda: self.stats.update(instances_skipped=1)
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
        while self._prefetch_workers < PREFETCH_WORKERS and self._prefetch_queue:
            self._prefetch_workers += 1
            self._nursery.start_soon(self._prefetch_worker)

    async def _prefetch_worker(self) -> None:
        try:
            with background():
                await self._prefetch_queued()
        finally:
            self._prefetch_workers -= 1

    async def _prefetch_queued(self) -> None:
        while self._prefetch_queue:
            query = self._prefetch_queue.popleft()
            try:
                await self.find_studies(query)
            except Exception as exc:  # only an optimisation: a reader asking later sees its own error
                log.info("background search failed: %s", exc)
            finally:
                self._prefetching.discard(query)

    def forget_searches(self) -> None:
        self._answers.clear()

    async def open_instance(self, reference: InstanceReference) -> Opened:
        """Open the cache file of one instance, downloading it first if needed; returns once it
        can be read (see the module docstring)."""
        uid = reference.instance_uid
        with self.cache.wanted(uid):
            flight: _Flight | None = None
            own = False  # whether this open started the download it waits for
            again = False  # whether a download that left nothing to open was tried once more
            while True:
                opened = await self._open_now(uid, hit=flight is None)
                if opened is not None:
                    return opened
                if self._read_aheads.get(reference.series_uid) is None and not self.cache.arriving(uid):
                    if flight is not None and flight.ended:
                        if flight.error is not None and own:
                            raise _again(flight.error)
                        if flight.error is None and again:
                            raise PacsProtocolError(f"the download of {uid} left nothing in the cache")
                        # joined one already failing, or the file went between its download and
                        # this open (another host's janitor): try once on our own
                        again = again or flight.error is None
                        flight = None
                    flight = self._singles.get(uid) if flight is None else flight
                    if flight is None:
                        own = True
                        flight = self._singles[uid] = _Flight()
                        if self._nursery is None:  # no background work: the opener downloads it
                            await self._run_single(reference, flight)
                            continue
                        self._nursery.start_soon(self._run_single, reference, flight)
                await self._waiters.setdefault(uid, trio.Event()).wait()

    async def _open_now(self, uid: str, hit: bool) -> Opened | None:
        if (published := await self.cache.open_for_reading(uid)) is not None:
            fd, entry = published
            if hit:
                self.stats["cache_hits"] += 1
            return Opened(fd, entry.size, just_written=self.cache.just_written(uid))
        if (arriving := self.cache.open_arrival(uid)) is not None:
            fd, arrival = arriving
            assert arrival.size is not None
            if hit and arrival.arrived >= arrival.size:  # all on disk, only its publication pending
                self.stats["cache_hits"] += 1
            return Opened(fd, arrival.size, arrival=arrival, just_written=True)
        return None

    async def _run_single(self, reference: InstanceReference, flight: _Flight) -> None:
        try:
            await self._download_instance(reference)
        except Exception as exc:  # the openers waiting for it raise it
            flight.error = exc
        finally:
            flight.ended = True
            del self._singles[reference.instance_uid]
            self._wake_all()

    async def _download_instance(self, reference: InstanceReference) -> None:
        """Download one instance unless it was cached, or began arriving, while this waited for a
        download slot, or (a shared cache) another host has published it meanwhile."""
        uid = reference.instance_uid
        async with self._download_limiter:
            if not await self.cache.missing([uid]):
                return
            async with self.cache.fetching(uid) as needed:
                if not needed:
                    return
                try:
                    await self._fetch(reference)
                except CacheFull:
                    # The disk filled up under the cache (other files, or bounds set too high): make
                    # room by dropping everything not open, and try once more before giving up.
                    log.warning("cache disk full: evicting every file not open and retrying")
                    await self.cache.clear()
                    await self._fetch(reference)

    @property
    def downloads_in_flight(self) -> int:
        return len(self._singles) + len(self._read_aheads)

    async def settled(self) -> None:
        """Until no download runs or waits to run (for ``trolleyfs prefetch`` and tests)."""
        while self.downloads_in_flight or self._queued_read_aheads:
            await self._waiters.setdefault(_SETTLED, trio.Event()).wait()

    def reading_ahead(self, series_uid: str) -> bool:
        """Whether a read-ahead of this series is running or queued."""
        return series_uid in self._read_aheads or any(
            queued.series_uid == series_uid for queued, _ in self._queued_read_aheads)

    def read_ahead(self, series: SeriesReference, estimated_bytes: int = 0) -> None:
        """Download ``series`` in the background, unless that is under way or queued already:
        now if the bounds allow, else once a running read-ahead ends."""
        if self._nursery is None or self.reading_ahead(series.series_uid):
            return
        self._queued_read_aheads.append((series, estimated_bytes))
        self._admit_read_aheads()

    def _admit_read_aheads(self) -> None:
        budget = self.cache.max_bytes // 2
        while self._queued_read_aheads and len(self._read_aheads) < _READ_AHEADS and self._nursery is not None:
            series, estimate = self._queued_read_aheads[0]
            if self._read_aheads and sum(self._read_ahead_bytes.values()) + estimate > budget:
                return
            self._queued_read_aheads.popleft()
            self._read_aheads[series.series_uid] = _Flight()
            self._read_ahead_bytes[series.series_uid] = estimate
            self._nursery.start_soon(self._run_read_ahead, series)

    async def _run_read_ahead(self, series: SeriesReference) -> None:
        self.stats["read_aheads"] += 1
        try:
            with background():
                # with a shared cache another host may be reading it ahead: its files are
                # looked for meanwhile, and only what it left out is fetched after it
                async with self.cache.exclusive(f"series {series.series_uid}", on_wait=self._wake_all):
                    if not series.listed_uids or await self.cache.missing(series.listed_uids):
                        await self.download(series)
        except Exception as exc:  # a read-ahead is an optimisation: its failure must not end the mount
            log.info("read-ahead of series %s failed: %s", series.series_uid, exc)
        finally:
            self._read_aheads.pop(series.series_uid).ended = True
            self._read_ahead_bytes.pop(series.series_uid, None)
            self._wake_all()
            self._admit_read_aheads()

    def _arrived(self, uid: str) -> None:
        if (event := self._waiters.pop(uid, None)) is not None:
            event.set()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()

    def _published(self, uid: str, size: int) -> None:
        self.stats["instances_downloaded"] += 1
        self.stats["bytes_downloaded"] += size

    def _refused(self, message: str) -> None:
        log.warning("%s; not cached", message)
        self.stats["instances_refused"] += 1

    async def rendered(self, reference: InstanceReference, size: int) -> bytes | None:
        """The PACS's rendering of one instance (PNG or JPEG), or None when the downloader
        cannot ask for one or the PACS would not render it (the caller downloads instead); a
        PACS that does not answer is an error, as for a download."""
        if not isinstance(self.downloader, Renderer):
            return None
        self.stats["renders"] += 1
        try:
            return await self.downloader.rendered(reference, size)
        except (PacsProtocolError, NotFound) as exc:
            log.info("the PACS did not render an instance (%s); downloading it instead", type(exc).__name__)
            return None

    async def download(self, reference: Reference) -> None:
        """Make sure every instance ``reference`` names is in the cache."""
        if isinstance(reference, InstanceReference):
            opened = await self.open_instance(reference)
            if opened.arrival is not None:
                await opened.arrival.wait_for(opened.size)
            self.cache.close_for_reading(reference.instance_uid, opened.fd)
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
                wanted = set(await self.cache.missing(i.uid for i in series.instances))
                instances = [i.reference for i in series.instances if i.uid in wanted]
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
                                nursery.start_soon(self._download_instance, instance)

    async def _fetch(self, reference: Reference) -> None:
        """Run the downloader; instances it delivers are published while it goes on streaming."""
        self.stats["download_requests"] += 1  # counted as it starts: readers may be served before it ends
        try:
            with first_error():
                async with trio.open_nursery() as nursery:
                    await self.downloader.fetch(reference, _PublishingSink(self, nursery))
        except NeedsInstances:
            self.stats["download_requests"] -= 1  # nothing was asked of the PACS
            raise
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
        self._token = trio.lowlevel.current_trio_token()

    def open_part(self, expected: Reference, size: int | None) -> PartWriter:
        return self._trolley.cache.open_part(expected, size, self._token)

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
            self._trolley._refused(str(exc))
            return
        finally:
            self._slots.release()
        self._trolley._published(writer.uid, writer.size)
        self._trolley._arrived(writer.uid)


def _again(error: BaseException) -> TrolleyError:
    """The error of a download that ended, raised again for one more waiter."""
    if isinstance(error, TrolleyError):
        return type(error)(*error.args)
    return PacsError(f"{type(error).__name__}: {error}")
