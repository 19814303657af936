"""Files readable while they arrive, and background work that stays within its bounds."""

from __future__ import annotations

import errno
import io
import os
import threading

import trio
from pydicom import dcmread
from trio.testing import wait_all_tasks_blocked

from tests.unit.helpers import all_files, filesystem_over, read_all
from trolleyfs.cache import InstanceCache, LAYOUT_VERSION
from trolleyfs.errors import PacsError
from trolleyfs.model import InstanceReference, SeriesReference
from trolleyfs.priority import Slots, background
from trolleyfs.testing.data import generate
from trolleyfs.trolley import Trolley


def first_series(files: dict) -> list:
    nodes = [files[path] for path in sorted(files)]
    series_uid = nodes[0].reference.series_uid
    return [node for node in nodes if node.reference.series_uid == series_uid]


async def test_a_file_opens_and_reads_what_has_arrived_while_the_rest_is_still_coming(pacs, tmp_path):
    """The PACS sends half the instance and stalls: open returns with the true size, the first
    bytes read at once, a read past them waits; when the transfer then fails, that read is EIO
    and nothing is left in the cache."""
    async with filesystem_over(pacs, tmp_path, readahead_max=0, retries=0) as fs:
        node = first_series(await all_files(fs))[0]
        data = pacs.instances[node.uid].data
        pacs.faults.add("wado-rs", "stall", count=1)
        handle, _ = await fs.open(node.inode, writable=False)
        assert fs.getattr(node.inode).size == len(data)  # from the part's Content-Length
        assert await fs.read(handle, 0, 1000) == data[:1000]
        failures: list[BaseException] = []

        async def read_the_end() -> None:
            try:
                await fs.read(handle, len(data) - 100, 100)
            except PacsError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_the_end)
            await wait_all_tasks_blocked()
            assert not failures  # waiting for bytes that have not come
            pacs.faults.released.set()  # the PACS gives up: the body ends inside the part
        assert [exc.errno for exc in failures] == [errno.EIO]
        fs.release(handle)
        assert node.uid not in fs.trolley.cache
        assert not list((tmp_path / LAYOUT_VERSION / "tmp").iterdir())
        assert await read_all(fs, node.inode) == data  # opened again: downloaded whole


async def test_a_series_read_ahead_skips_the_file_already_fetched_alone(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        series = first_series(await all_files(fs))
        for node in series:
            assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
        await fs.trolley.settled()
        stats = fs.stats()
    assert stats["read_aheads"] == 1
    assert stats["instances_skipped"] == 1  # the first file came alone, then in the series answer
    assert stats["instances_downloaded"] == len(series)
    assert stats["bytes_downloaded"] == sum(len(pacs.instances[node.uid].data) for node in series)


async def test_a_file_larger_than_the_whole_cache_still_opens_and_reads(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, cache_size="1K", readahead_max=0) as fs:
        nodes = first_series(await all_files(fs))[:3]
        for node in nodes:
            assert len(pacs.instances[node.uid].data) > 1024
            assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
        await fs.trolley.settled()
        handle, _ = await fs.open(nodes[0].inode, writable=False)  # again, after its eviction
        assert await fs.read(handle, 0, 64) == pacs.instances[nodes[0].uid].data[:64]
        fs.release(handle)


async def test_unmounting_during_a_transfer_leaks_no_descriptor_and_no_temporary_file(pacs, tmp_path):
    descriptors = len(os.listdir("/proc/self/fd"))
    pacs.faults.add("wado-rs", "stall")
    async with filesystem_over(pacs, tmp_path, retries=0) as fs:
        series = first_series(await all_files(fs))
        reference = SeriesReference(study_uid=series[0].reference.study_uid, series_uid=series[0].reference.series_uid)
        fs.trolley.read_ahead(reference)
        await wait_all_tasks_blocked()  # the read-ahead's worker thread now waits on the stalled PACS
    pacs.faults.released.set()
    assert not list((tmp_path / LAYOUT_VERSION / "tmp").iterdir())
    pacs.stop()  # closes the PACS's own end of the stalled connection, and its listening socket
    assert len(os.listdir("/proc/self/fd")) <= descriptors - 1


async def test_background_work_never_takes_the_slots_kept_for_readers():
    slots = Slots(total=4, reserved=1)
    held = trio.Event()
    entered: list[str] = []

    async def hold(kind: str) -> None:
        async with slots.slot():
            entered.append(kind)
            await held.wait()

    async def in_background() -> None:
        with background():
            await hold("background")

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(in_background)
        await wait_all_tasks_blocked()
        assert entered == ["background"] * 3  # the fourth slot is the readers'
        nursery.start_soon(hold, "reader")
        await wait_all_tasks_blocked()
        assert entered[-1] == "reader"
        held.set()


class HeldDownloader:
    """Counts the fetches under way and holds each until the test lets it go."""

    def __init__(self) -> None:
        self.running = 0
        self.started: list[str] = []
        self.go = trio.Event()

    async def fetch(self, reference, sink) -> None:  # noqa: ANN001
        self.running += 1
        self.started.append(reference.series_uid)
        try:
            await self.go.wait()
        finally:
            self.running -= 1


async def test_read_aheads_run_two_at_a_time_and_the_queue_keeps_the_newest(tmp_path):
    downloader = HeldDownloader()
    cache = await InstanceCache.open(tmp_path / "cache", max_bytes=10**9)
    trolley = Trolley(None, downloader, cache)  # type: ignore[arg-type]
    async with trolley.background_work():
        for number in range(20):
            trolley.read_ahead(SeriesReference(study_uid="1.2", series_uid=f"1.2.{number}"), estimated_bytes=1000)
        await wait_all_tasks_blocked()
        assert downloader.running == 2 and sorted(downloader.started) == ["1.2.0", "1.2.1"]
        downloader.go.set()
        await trolley.settled()
    assert len(downloader.started) == 2 + 16  # the 2 oldest of the 18 waiting were dropped
    assert set(downloader.started[2:]) == {f"1.2.{number}" for number in range(4, 20)}


async def test_read_aheads_together_stay_within_half_the_cache(tmp_path):
    downloader = HeldDownloader()
    cache = await InstanceCache.open(tmp_path / "cache", max_bytes=1000)
    trolley = Trolley(None, downloader, cache)  # type: ignore[arg-type]
    async with trolley.background_work():
        trolley.read_ahead(SeriesReference(study_uid="1.2", series_uid="1.2.1"), estimated_bytes=400)
        trolley.read_ahead(SeriesReference(study_uid="1.2", series_uid="1.2.2"), estimated_bytes=400)
        await wait_all_tasks_blocked()
        assert downloader.started == ["1.2.1"]  # 800 bytes would pass half of the 1000
        downloader.go.set()
        await trolley.settled()
    assert downloader.started == ["1.2.1", "1.2.2"]


class LastStepHeldDownloader:
    """Sends one instance whole, then holds the step that publishes it (the rename and the
    event loop's indexing) until the test lets it go."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fetches = 0
        self.publish = threading.Event()

    async def fetch(self, reference, sink) -> None:  # noqa: ANN001
        self.fetches += 1

        def send() -> None:
            part = sink.open_part(reference, len(self.data))
            part.write(memoryview(self.data))
            self.publish.wait()
            part.end()

        await trio.to_thread.run_sync(send)


async def test_a_file_wholly_received_but_not_yet_published_opens_as_a_cache_hit(tmp_path):
    """A second open while the first download's last step is still under way needs no download:
    it is a hit (the status tool's hit ratio said 0% for a file read twice)."""
    data = next(generate())
    header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    reference = InstanceReference(
        study_uid=header.StudyInstanceUID, series_uid=header.SeriesInstanceUID, instance_uid=header.SOPInstanceUID)
    downloader = LastStepHeldDownloader(data)
    cache = await InstanceCache.open(tmp_path / "cache", max_bytes=10**9)
    trolley = Trolley(None, downloader, cache)  # type: ignore[arg-type]
    async with trolley.background_work():
        try:
            with trio.fail_after(10):
                first = await trolley.open_instance(reference)
                assert first.arrival is not None
                await first.arrival.wait_for(len(data))
                assert os.pread(first.fd, len(data) + 1, 0) == data
                cache.close_for_reading(reference.instance_uid, first.fd)
                second = await trolley.open_instance(reference)
                assert trolley.stats["cache_hits"] == 1
        finally:
            downloader.publish.set()
        await trolley.settled()
        cache.close_for_reading(reference.instance_uid, second.fd)
    assert downloader.fetches == 1
    assert trolley.stats["cache_hits"] == 1
