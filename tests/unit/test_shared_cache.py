"""The shared cache: several daemons' caches over one directory (two caches in this process
exclude each other as two processes do: their locks are per open file, not per process)."""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

from tests.unit.helpers import all_files, filesystem_over, read_all
from tests.unit.test_cache import FILES, put, reference, uid
from trolleyfs.cache import Arrival, Identity, InstanceCache
from trolleyfs.shared_cache import SharedCache
from trolleyfs.trolley import Trolley

SHARED = {"cache_mode": "shared", "listing_ttl": 600}


def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("shared-v1/*/objects/*/*.dcm"))


async def read_everything(fs, files: dict) -> dict[str, bytes]:
    read: dict[str, bytes] = {}

    async def one(path: str) -> None:
        read[path] = await read_all(fs, files[path].inode)

    async with trio.open_nursery() as nursery:
        for path in files:
            nursery.start_soon(one, path)
    return read


async def test_two_daemons_reading_the_same_files_at_once_fetch_each_instance_once(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path / "shared", **SHARED) as first, \
            filesystem_over(pacs, tmp_path / "shared", **SHARED) as second:
        files = [await all_files(first), await all_files(second)]
        results: list[dict[str, bytes]] = [{}, {}]

        async def reader(index: int, fs) -> None:
            results[index] = await read_everything(fs, files[index])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, 0, first)
            nursery.start_soon(reader, 1, second)
        expected = {instance.value("SOPInstanceUID"): instance.data for instance in pacs.instances.values()}
        for result in results:
            assert sorted(result.values()) == sorted(expected.values())
        published = first.trolley.stats["instances_downloaded"] + second.trolley.stats["instances_downloaded"]
        assert published == len(expected)  # each instance published by one daemon only
        cluster_sent = Counter(pacs.sent)
    # one daemon alone, on a fresh private cache, for comparison: the cluster costs the PACS no more
    pacs.sent.clear()
    async with filesystem_over(pacs, tmp_path / "private", listing_ttl=600) as alone:
        await read_everything(alone, await all_files(alone))
    assert sum(cluster_sent.values()) <= sum(pacs.sent.values())
    assert set(cluster_sent) == set(expected)
    assert len(entries(tmp_path / "shared")) == len(expected)


async def test_an_entry_another_daemon_published_is_served_without_fetching(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, **SHARED) as first:
        files = await all_files(first)
        path, node = next(iter(files.items()))
        data = await read_all(first, node.inode)
    pacs.sent.clear()
    async with filesystem_over(pacs, tmp_path, **SHARED) as second:
        files = await all_files(second)
        assert await read_all(second, files[path].inode) == data
        assert sum(pacs.sent.values()) == 0


async def test_a_damaged_entry_is_fetched_again_not_served(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, **SHARED) as first:
        files = await all_files(first)
        path, node = next(iter(files.items()))
        data = await read_all(first, node.inode)
    (entry,) = entries(tmp_path)
    damaged = bytearray(entry.read_bytes())
    damaged[-1] ^= 0xFF  # same size, other bytes: only the checksum tells
    entry.write_bytes(bytes(damaged))
    pacs.sent.clear()
    async with filesystem_over(pacs, tmp_path, **SHARED) as second:
        files = await all_files(second)
        assert await read_all(second, files[path].inode) == data
        assert sum(pacs.sent.values()) == 1
    assert [e.read_bytes() for e in entries(tmp_path)] == [data]


async def test_an_entry_evicted_by_another_daemon_is_fetched_again(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, **SHARED) as first, \
            filesystem_over(pacs, tmp_path, **SHARED) as second:
        files = await all_files(first)
        path, node = next(iter(files.items()))
        data = await read_all(first, node.inode)
        await first.trolley.settled()  # its read-ahead of the series too
        await second.trolley.cache.clear()  # the other host's janitor takes everything
        assert entries(tmp_path) == []
        pacs.sent.clear()
        assert await read_all(first, node.inode) == data
        assert sum(pacs.sent.values()) == 1


async def test_the_janitor_skips_a_file_another_daemon_has_open(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, **SHARED) as first, \
            filesystem_over(pacs, tmp_path, **SHARED) as second:
        files = await all_files(first)
        path, node = next(iter(files.items()))
        handle, _ = await first.open(node.inode, writable=False)
        try:
            head = await first.read(handle, 0, 1000)
            await first.trolley.settled()
            await second.trolley.cache.clear()
            assert len(entries(tmp_path)) == 1  # open elsewhere: kept
            rest = await first.read(handle, 1000, 10**8)
        finally:
            first.release(handle)
        assert head + rest == pacs.instances[node.uid].data
        await second.trolley.cache.clear()
        assert entries(tmp_path) == []  # closed now: evicted


async def test_within_the_bound_the_least_recently_used_go_first(tmp_path):
    first = await SharedCache.open_shared(tmp_path, "ns", max_bytes=10**9)
    for data in FILES[:4]:
        await put(first, data)
    objects = entries(tmp_path)
    for age, data in enumerate(FILES[:4]):  # FILES[0] the oldest
        path = first.peek(uid(data)).path
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    second = await SharedCache.open_shared(tmp_path, "ns", max_bytes=2 * len(FILES[0]) + 10)
    await second._evict()
    left = {path.name for path in entries(tmp_path)}
    assert left == {first.peek(uid(data)).path.name for data in FILES[2:4]}
    assert len(objects) == 4 and second.total_bytes == 2 * len(FILES[0])


async def test_temporary_files_of_a_dead_daemon_are_reaped_and_a_live_ones_kept(tmp_path):
    live = await SharedCache.open_shared(tmp_path, "ns", max_bytes=10**9)
    tmp = tmp_path / "shared-v1" / "ns" / "tmp"
    dead_part = tmp / "otherhost.4242-0.0123.part"
    dead_part.write_bytes(b"half a file")
    live_part = tmp / f"{live._owner}.abcd.part"
    live_part.write_bytes(b"in progress")
    janitor = await SharedCache.open_shared(tmp_path, "ns", max_bytes=10**9)
    await janitor.clear()
    assert not dead_part.exists() and live_part.exists()


async def test_two_sources_in_one_directory_do_not_mix(tmp_path):
    first = await SharedCache.open_shared(tmp_path, "one", max_bytes=10**9)
    second = await SharedCache.open_shared(tmp_path, "two", max_bytes=10**9)
    await put(first, FILES[0])
    assert await second.open_for_reading(uid(FILES[0])) is None
    assert await second.missing([uid(FILES[0])]) == [uid(FILES[0])]


class _OneFile:
    """A downloader that sends FILES[0] for whatever it is asked, counting the requests."""

    def __init__(self) -> None:
        self.requests = 0

    async def fetch(self, reference, sink) -> None:  # noqa: ANN001
        self.requests += 1
        async with sink.receive(reference) as writer:
            await writer.write(FILES[0])


async def test_a_fetch_cancelled_while_it_takes_the_lock_leaves_the_lock_free(tmp_path):
    first = await SharedCache.open_shared(tmp_path, "ns", 10**9)
    second = await SharedCache.open_shared(tmp_path, "ns", 10**9, wait_bound=1.0)
    taking = first._locks.try_lock

    def slow_try_lock(*args, **options):  # a shared filesystem that takes its time
        time.sleep(0.2)
        return taking(*args, **options)

    first._locks.try_lock = slow_try_lock  # type: ignore[method-assign]
    with trio.move_on_after(0.05):  # e.g. a sibling download failed and its nursery is cancelled
        async with first.fetching(uid(FILES[0])):
            pass
    await trio.to_thread.run_sync(time.sleep, 0.3)  # the thread has finished
    async with second.fetching(uid(FILES[0])) as needed:
        assert needed


async def test_a_failing_look_inside_a_claim_leaves_the_lock_free(tmp_path):
    first = await SharedCache.open_shared(tmp_path, "ns", 10**9)
    second = await SharedCache.open_shared(tmp_path, "ns", 10**9, wait_bound=1.0)

    def failing_find(key: str) -> None:
        raise OSError(errno.EIO, "Input/output error")  # one hiccup of a soft NFS mount

    first._find = failing_find  # type: ignore[method-assign]
    arrival = Arrival("1.2.3", 10, tmp_path / "x.part", trio.lowlevel.current_trio_token())
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(first.claim, Identity("1.2.3", "", ""), arrival)
    async with second.fetching("1.2.3") as needed:
        assert needed


async def test_a_damaged_entry_another_daemon_has_open_is_fetched_again_not_an_error(tmp_path):
    first = await SharedCache.open_shared(tmp_path, "ns", 10**9)
    second = await SharedCache.open_shared(tmp_path, "ns", 10**9, wait_bound=5)
    await put(first, FILES[0])
    fd, entry = await first.open_for_reading(uid(FILES[0]))  # held open: it cannot be deleted
    damaged = bytearray(entry.path.read_bytes())
    damaged[-1] ^= 0xFF
    entry.path.write_bytes(bytes(damaged))
    downloader = _OneFile()
    trolley = Trolley(None, downloader, second)  # type: ignore[arg-type]
    opened = await trolley.open_instance(reference(FILES[0]))
    try:
        assert os.pread(opened.fd, len(FILES[0]) + 1, 0) == FILES[0]
    finally:
        second.close_for_reading(uid(FILES[0]), opened.fd)
        first.close_for_reading(uid(FILES[0]), fd)
    assert downloader.requests == 1


async def test_a_queued_download_of_an_instance_cached_meanwhile_asks_nothing(tmp_path):
    cache = await InstanceCache.open(tmp_path, 10**9)
    downloader = _OneFile()
    trolley = Trolley(None, downloader, cache, parallel_downloads=1)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for _ in range(2):  # the second waits for the slot, then finds it cached
            nursery.start_soon(trolley._download_instance, reference(FILES[0]))
    assert downloader.requests == 1


async def test_an_entry_gone_between_its_download_and_the_open_is_fetched_once_more(tmp_path):
    cache = await InstanceCache.open(tmp_path, 10**9)
    downloader = _OneFile()
    trolley = Trolley(None, downloader, cache)  # type: ignore[arg-type]
    fetch = trolley._fetch

    async def fetch_then_lose_it(reference) -> None:  # noqa: ANN001
        await fetch(reference)
        if downloader.requests == 1:  # another host's janitor, right after the first download
            cache.peek(uid(FILES[0])).path.unlink()

    trolley._fetch = fetch_then_lose_it  # type: ignore[method-assign]
    opened = await trolley.open_instance(reference(FILES[0]))
    try:
        assert os.pread(opened.fd, len(FILES[0]) + 1, 0) == FILES[0]
    finally:
        cache.close_for_reading(uid(FILES[0]), opened.fd)
    assert downloader.requests == 2
