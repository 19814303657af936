"""The disk cache: atomic publication, LRU bounds, pins, restart, damage."""

from __future__ import annotations

import os
import stat

import pytest

from trolleyfs.cache import InstanceCache
from trolleyfs.errors import PacsProtocolError, UnrequestedInstance
from trolleyfs.model import InstanceReference, Reference, SeriesReference
from trolleyfs.testing.data import SampleSpec, generate

FILES = list(generate(SampleSpec(patients=(("P", "A^B"),), studies_per_patient=1, series_per_study=1,
                                 instances_per_series=5)))
SIZE = len(FILES[0])


def uid(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def reference(data: bytes, **changed: str) -> InstanceReference:
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    uids = {"study_uid": str(dataset.StudyInstanceUID), "series_uid": str(dataset.SeriesInstanceUID),
            "instance_uid": str(dataset.SOPInstanceUID)}
    return InstanceReference(**{**uids, **changed})


async def put(cache: InstanceCache, data: bytes, expected: Reference | None = None) -> None:
    async with cache.receive(expected) as writer:
        for start in range(0, len(data), 1000):
            await writer.write(data[start : start + 1000])


async def test_published_files_are_whole_and_the_directory_private(tmp_path):
    cache = await InstanceCache.open(tmp_path / "c", max_bytes=10**9)
    await put(cache, FILES[0])
    entry = cache.get(uid(FILES[0]))
    assert entry.path.read_bytes() == FILES[0]
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


async def test_a_failed_download_leaves_nothing(tmp_path):
    cache = await InstanceCache.open(tmp_path / "c", max_bytes=10**9)
    with pytest.raises(RuntimeError):
        async with cache.receive() as writer:
            await writer.write(FILES[0][:500])
            raise RuntimeError("connection lost")
    with pytest.raises(PacsProtocolError):
        await put(cache, b"not dicom at all" * 100)
    for wrong in (reference(FILES[2]), reference(FILES[1], series_uid="1.2.3"), reference(FILES[1], study_uid="1.2")):
        with pytest.raises(UnrequestedInstance):
            await put(cache, FILES[1], expected=wrong)
    series = reference(FILES[1])
    with pytest.raises(UnrequestedInstance):  # a series that names its instances admits no other
        await put(cache, FILES[1], SeriesReference(study_uid=series.study_uid, series_uid=series.series_uid,
                                                   instance_uids=(uid(FILES[2]),)))
    assert len(cache) == 0 and cache.total_bytes == 0
    assert list((tmp_path / "c" / "v1" / "tmp").iterdir()) == []


async def test_least_recently_used_unpinned_entries_are_evicted_first(tmp_path):
    cache = await InstanceCache.open(tmp_path / "c", max_bytes=3 * SIZE + 10)
    for data in FILES[:3]:
        await put(cache, data)
    fd, _ = await cache.open_for_reading(uid(FILES[0]))
    cache.get(uid(FILES[1]))  # now FILES[2] is the least recently used unpinned entry
    await put(cache, FILES[3])
    assert cache.get(uid(FILES[2])) is None
    assert all(cache.get(uid(data)) for data in (FILES[0], FILES[1], FILES[3]))
    assert os.pread(fd, SIZE, 0) == FILES[0]
    cache.close_for_reading(uid(FILES[0]), fd)
    cache.get(uid(FILES[1]))
    cache.get(uid(FILES[3]))
    await put(cache, FILES[4])
    assert cache.get(uid(FILES[0])) is None
    assert cache.total_bytes <= cache.max_bytes


async def test_the_index_survives_a_restart_and_damaged_files_are_dropped(tmp_path):
    cache = await InstanceCache.open(tmp_path / "c", max_bytes=10**9)
    for data in FILES[:3]:
        await put(cache, data)
    damaged = cache.get(uid(FILES[1])).path
    damaged.write_bytes(FILES[1][:100])  # as a crash before the data reached the disk would leave it
    (tmp_path / "c" / "v1" / "tmp" / "leftover.part").write_bytes(b"half")
    reopened = await InstanceCache.open(tmp_path / "c", max_bytes=10**9)
    assert reopened.get(uid(FILES[0])).path.read_bytes() == FILES[0]
    assert reopened.get(uid(FILES[1])) is None
    assert len(reopened) == 2 and reopened.total_bytes == 2 * SIZE
    assert list((tmp_path / "c" / "v1" / "tmp").iterdir()) == []


async def test_a_smaller_bound_at_restart_evicts_down_to_it(tmp_path):
    cache = await InstanceCache.open(tmp_path / "c", max_bytes=10**9)
    for data in FILES:
        await put(cache, data)
    reopened = await InstanceCache.open(tmp_path / "c", max_bytes=2 * SIZE)
    assert len(reopened) == 2
    assert reopened.get(uid(FILES[4])) is not None  # most recent survive


async def test_eviction_keeps_the_minimum_free_space(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    cache = await InstanceCache.open(tmp_path / "c", max_bytes=10**12, min_free_space=free + 10**12)
    for data in FILES[:3]:
        await put(cache, data)
    assert len(cache) == 0  # nothing can be kept while the disk is "too full"
    cache.min_free_space = 0
    await put(cache, FILES[3])
    fd, _ = await cache.open_for_reading(uid(FILES[3]))
    cache.min_free_space = free + 10**12
    await put(cache, FILES[4])
    assert cache.get(uid(FILES[3])) is not None  # pinned (open) entries stay regardless
    assert cache.get(uid(FILES[4])) is None
    cache.close_for_reading(uid(FILES[3]), fd)


async def test_a_file_deleted_behind_the_caches_back_is_forgotten_not_served(tmp_path):
    cache = await InstanceCache.open(tmp_path / "c", max_bytes=10**9)
    await put(cache, FILES[0])
    cache.get(uid(FILES[0])).path.unlink()
    assert await cache.open_for_reading(uid(FILES[0])) is None
    assert len(cache) == 0 and cache.total_bytes == 0
