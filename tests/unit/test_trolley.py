"""The Trolley's background searches, with a searcher that answers only when the test says so."""

from __future__ import annotations

import trio
from trio.testing import wait_all_tasks_blocked

from trolleyfs.cache import InstanceCache
from trolleyfs.model import Query, QueryLevel, Study
from trolleyfs.trolley import PREFETCH_WORKERS, Trolley


class HeldSearcher:
    """Records each search and holds it until ``release`` is set."""

    def __init__(self) -> None:
        self.asked: list[Query] = []
        self.release = trio.Event()

    async def find_studies(self, query: Query) -> list[Study]:
        self.asked.append(query)
        await self.release.wait()
        return [Study(uid=query.StudyInstanceUID, attributes={}, series=[])]


def series_query(number: int) -> Query:
    return Query(StudyInstanceUID="1.2.3", SeriesInstanceUID=f"1.2.3.{number}", query_level=QueryLevel.INSTANCE)


async def test_prefetched_searches_run_a_few_at_a_time_once_each_and_answer_later_listings(tmp_path):
    searcher = HeldSearcher()
    cache = await InstanceCache.open(tmp_path / "cache", max_bytes=10**6)
    trolley = Trolley(searcher, downloader=None, cache=cache)  # type: ignore[arg-type]
    async with trolley.background_work():
        queries = [series_query(n) for n in range(PREFETCH_WORKERS + 2)]
        trolley.prefetch_searches(queries)
        trolley.prefetch_searches(queries)  # asked again while under way: nothing new
        await wait_all_tasks_blocked()
        assert searcher.asked == queries[:PREFETCH_WORKERS]
        async with trio.open_nursery() as readers:
            readers.start_soon(trolley.find_studies, queries[0])  # joins the search under way
            await wait_all_tasks_blocked()
            searcher.release.set()
        await wait_all_tasks_blocked()
        assert searcher.asked == queries
        for query in queries:
            assert (await trolley.find_studies(query))[0].uid == "1.2.3"
        assert trolley.stats["searches"] == len(queries)
