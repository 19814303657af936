"""The fault-injection suite: every way the embedded PACS can fail, through a real mount.

For each fault: the reader gets EIO within bounded time (or the right bytes after a successful
retry), nothing wrong or partial is ever served or cached, the mount stays up, and the next read
after the fault clears returns the stored bytes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from trolleyfs.testing.data import SampleSpec, generate
from trolleyfs.testing.pacs import EmbeddedPacs

TIMEOUT = 1.0
BOUND = 8.0  # seconds: timeout × (retries + 1) plus backoff and slack

FAILS = [
    ("wado-rs", "status", {"status": 500}),
    ("wado-rs", "hang", {}),
    ("wado-rs", "trickle", {}),
    ("wado-rs", "truncate", {}),
    ("wado-rs", "kill", {}),
    ("wado-rs", "garbage", {}),
    ("wado-rs", "empty", {}),
    ("wado-rs", "wrong-instance", {}),
    ("wado-rs", "not-dicom", {}),
    ("wado-uri", "truncate", {}),
    ("wado-uri", "wrong-instance", {}),
    ("wado-uri", "not-dicom", {}),
    ("wado-uri", "status", {"status": 502}),
]
RECOVERS = [
    ("wado-rs", "status", {"status": 503, "count": 1}),
    ("wado-rs", "status", {"status": 429, "count": 1, "retry_after": 1}),
    ("wado-uri", "status", {"status": 500, "count": 1}),
]
LISTING_FAILS = [("qido", action, extra) for action, extra in
                 [("garbage", {}), ("empty", {}), ("status", {"status": 500}), ("hang", {})]]


def first_file_with_fault(mount, pacs, kind: str, action: str, extra: dict):
    """A mount reading single instances over ``kind``, its first file, and the fault armed."""
    options = {"downloader": "wado-uri", "wado_uri_url": pacs.wado_uri_url} if kind == "wado-uri" else {}
    mounted = mount(pacs.dicomweb_url, timeout=TIMEOUT, retries=1, readahead_max=0, **options)
    path = mounted.files()[0]
    pacs.faults.add(kind, action, **extra)
    return mounted, path


def stored(pacs: EmbeddedPacs, path: Path) -> bytes:
    return pacs.instances[path.name[:-4].rsplit("_", 1)[1]].data


def assert_cache_holds_only_whole_instances(pacs: EmbeddedPacs, cache_dir: Path) -> None:
    everything = {instance.data for instance in pacs.instances.values()}
    for cached in (cache_dir / "v1" / "objects").glob("*/*.dcm"):
        assert cached.read_bytes() in everything, cached
    assert not list((cache_dir / "v1" / "tmp").iterdir())


@pytest.mark.parametrize(("kind", "action", "extra"), FAILS, ids=[f"{k}-{a}-{e}" for k, a, e in FAILS])
def test_a_failing_download_gives_eio_in_bounded_time_and_never_wrong_bytes(mount, pacs, kind, action, extra):
    mounted, path = first_file_with_fault(mount, pacs, kind, action, extra)
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        path.read_bytes()
    assert raised.value.errno == errno.EIO
    assert time.monotonic() - started < BOUND
    assert_cache_holds_only_whole_instances(pacs, mount.cache_dir)
    pacs.faults.clear()
    assert path.read_bytes() == stored(pacs, path)
    assert os.path.ismount(mounted.path)


@pytest.mark.parametrize(("kind", "action", "extra"), RECOVERS, ids=[f"{k}-{e}" for k, a, e in RECOVERS])
def test_a_passing_fault_is_retried_and_gives_the_right_bytes(mount, pacs, kind, action, extra):
    _, path = first_file_with_fault(mount, pacs, kind, action, extra)
    started = time.monotonic()
    assert path.read_bytes() == stored(pacs, path)
    if extra.get("retry_after"):
        assert time.monotonic() - started >= extra["retry_after"] * 0.9  # Retry-After was honoured
    assert pacs.count(kind) == 2


@pytest.mark.parametrize(("kind", "action", "extra"), LISTING_FAILS, ids=[a for _, a, _ in LISTING_FAILS])
def test_a_failing_listing_gives_eio_and_is_not_cached(mount, pacs, kind, action, extra):
    mounted = mount(pacs.dicomweb_url, timeout=TIMEOUT, retries=1)
    patients = mounted.patients
    patient = next(patients.iterdir())
    pacs.faults.add(kind, action, **extra)
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        list(patient.iterdir())
    assert raised.value.errno == errno.EIO
    assert time.monotonic() - started < BOUND
    pacs.faults.clear()
    assert len(list(patient.iterdir())) == 2


def test_refused_connections_give_eio_then_the_mount_recovers(mount, pacs):
    mounted = mount(pacs.dicomweb_url, timeout=TIMEOUT, retries=1, readahead_max=0)
    path = mounted.files()[0]
    pacs.stop()
    try:
        with pytest.raises(OSError) as raised:
            path.read_bytes()
        assert raised.value.errno == errno.EIO
    finally:
        pacs.start()
    assert path.read_bytes() == stored(pacs, path)


BIG = SampleSpec(patients=(("BIG", "BIG^FILES"),), studies_per_patient=1, series_per_study=1,
                 instances_per_series=4, rows=1024, columns=1024, seed="trolleyfs-crash")


def test_a_daemon_killed_mid_download_leaves_no_partial_entry_and_restarts(mount):
    with EmbeddedPacs(generate(BIG)) as pacs:
        first = mount(pacs.dicomweb_url, readahead_max=0)
        files = first.files()
        files[0].read_bytes()  # one complete entry before the crash
        pacs.faults.add("wado-rs", "stall")  # half of the next file arrives, then nothing
        reader = threading.Thread(target=lambda: _read_quietly(files[1]), daemon=True)
        reader.start()
        tmp = mount.cache_dir / "v1" / "tmp"
        deadline = time.monotonic() + 20
        while not any(part.stat().st_size for part in tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)  # no event tells another process that a file grew
        assert any(part.stat().st_size for part in tmp.iterdir()), "the download never reached the disk"
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
        subprocess.run(["fusermount3", "-uz", str(first.path)], check=False)
        pacs.faults.clear()
        reader.join(30)
        second = mount(pacs.dicomweb_url, readahead_max=0)
        assert_cache_holds_only_whole_instances(pacs, mount.cache_dir)
        assert second.stats()["cache_files"] == 1
        for path in second.files():
            assert path.read_bytes() == stored(pacs, path)


def _read_quietly(path: Path) -> None:
    try:
        path.read_bytes()
    except OSError:
        pass


def test_32_readers_over_1000_instances_fetch_each_once(mount, tmp_path):
    spec = SampleSpec(patients=(("MANY", "MANY^READERS"),), studies_per_patient=1, series_per_study=2,
                      instances_per_series=500, rows=8, columns=8, seed="trolleyfs-concurrency")
    with EmbeddedPacs(generate(spec)) as pacs:
        mounted = mount(pacs.dicomweb_url, readahead_max=0, max_connections=16)
        files = mounted.files()
        assert len(files) == 1000
        errors: list[BaseException] = []

        def reader(offset: int) -> None:
            order = files[offset * 31 % len(files):] + files[: offset * 31 % len(files)]
            for path in order:
                try:
                    if path.read_bytes() != stored(pacs, path):
                        errors.append(AssertionError(f"wrong bytes in {path.name}"))
                except OSError as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=reader, args=(offset,)) for offset in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert errors == []
        assert pacs.count("wado-rs") == 1000


@pytest.fixture
def tiny_disk(tmp_path):
    """A 5 MiB tmpfs to put a cache on, so that the disk really fills up."""
    from tests.conftest import need_tool

    need_tool("mount")
    where = tmp_path / "tiny"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_evicts_closed_files_and_never_keeps_a_partial_one(mount, tiny_disk):
    with EmbeddedPacs(generate(BIG)) as pacs:  # four 2 MiB files on a 5 MiB disk
        mounted = mount(pacs.dicomweb_url, cache_dir=tiny_disk / "cache", cache_size="1G", min_free_space=0,
                        readahead_max=0)
        files = mounted.files()
        for path in files:  # the third no longer fits next to the first two: they make room
            assert path.read_bytes() == stored(pacs, path)
        assert_cache_holds_only_whole_instances(pacs, tiny_disk / "cache")
        with open(files[0], "rb") as kept_open:  # an open file is never evicted
            kept_open.read(10)
            for path in files[1:]:
                assert path.read_bytes() == stored(pacs, path)
            assert os.fstat(kept_open.fileno()).st_size == len(stored(pacs, files[0]))
        assert "cache disk full" in mounted.log_text()
