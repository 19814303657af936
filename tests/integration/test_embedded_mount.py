"""Faults through a real kernel mount, with the embedded PACS (in this process) behind it."""

from __future__ import annotations

import errno
import filecmp
import shutil
import subprocess
import threading
import time

import pytest


def first_file(mounted):
    return mounted.files()[0]


def soap_options(pacs) -> dict[str, str]:
    """Mount options for MINT search and RAD-69 retrieval from the embedded PACS (SOURCE: its MINT root)."""
    return {"searcher": "mint", "downloader": "rad69", "rad69_url": f"{pacs.base_url}/rad69"}


@pytest.mark.parametrize(
    "kind, action",
    [("wado-rs", action) for action in ("garbage", "truncate", "status")]
    + [("rad69", action) for action in ("xml-bomb", "xml-external", "garbage", "truncate", "missing", "status")],
)
def test_a_bad_answer_gives_eio_never_partial_bytes_and_the_mount_recovers(mount, pacs, kind, action):
    if kind == "rad69":
        mounted = mount(f"{pacs.base_url}/mint", timeout=2, retries=0, readahead_max=0, **soap_options(pacs))
    else:
        mounted = mount(pacs.dicomweb_url, timeout=2, retries=0, readahead_max=0)
    path = first_file(mounted)
    pacs.faults.add(kind, action, status=500)
    with pytest.raises(OSError) as raised:
        path.read_bytes()
    assert raised.value.errno == errno.EIO
    assert mounted.stats()["cache_files"] == 0
    pacs.faults.clear()
    stored = next(i.data for uid, i in pacs.instances.items() if path.name[:-4].endswith(uid))
    assert path.read_bytes() == stored


def test_a_hanging_pacs_gives_eio_within_the_timeout_while_other_calls_go_on(mount, pacs):
    mounted = mount(pacs.dicomweb_url, timeout=1, retries=0)
    files = mounted.files()
    pacs.faults.add("wado-rs", "hang")
    outcome: dict[str, object] = {}

    def read_hanging() -> None:
        started = time.monotonic()
        try:
            files[0].read_bytes()
        except OSError as exc:
            outcome["errno"] = exc.errno
        outcome["seconds"] = time.monotonic() - started

    reader = threading.Thread(target=read_hanging)
    reader.start()
    assert len(list(mounted.patients.iterdir())) == 2  # the mount still answers meanwhile
    reader.join(30)
    pacs.faults.clear()
    assert outcome["errno"] == errno.EIO
    assert outcome["seconds"] < 5


def test_a_stopped_pacs_gives_eio_for_new_listings_and_comes_back(mount, pacs):
    mounted = mount(pacs.dicomweb_url, timeout=1, retries=0, listing_ttl=0)
    assert len(list(mounted.patients.iterdir())) == 2
    pacs.stop()
    try:
        with pytest.raises(OSError) as raised:
            list(mounted.patients.iterdir())
        assert raised.value.errno == errno.EIO
    finally:
        pacs.start()
    assert len(list(mounted.patients.iterdir())) == 2


def test_parallel_readers_of_one_file_cause_one_download(mount, pacs):
    mounted = mount(pacs.dicomweb_url, readahead_max=0)
    path = first_file(mounted)
    results: list[bytes] = []
    readers = [threading.Thread(target=lambda: results.append(path.read_bytes())) for _ in range(6)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    assert len(results) == 6 and len(set(results)) == 1
    assert pacs.count("wado-rs") == 1


def test_cp_r_copies_a_series_exactly(mount, pacs, tmp_path):
    mounted = mount(pacs.dicomweb_url)
    series_dir = first_file(mounted).parent
    shutil.copytree(series_dir, tmp_path / "copy")
    names = sorted(p.name for p in series_dir.iterdir())
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(series_dir, tmp_path / "copy", names, shallow=False)
    assert mismatch == [] and errors == []
    assert subprocess.run(["cmp", str(series_dir / names[0]), str(tmp_path / "copy" / names[0])]).returncode == 0


def test_a_missing_name_is_remembered_by_the_kernel_for_the_listing_ttl(mount, pacs):
    remembered = mount(pacs.dicomweb_url, listing_ttl=60)
    series = first_file(remembered).parent
    before = remembered.stats()["lookups"]
    for _ in range(3):
        assert not (series / "no-such-file.dcm").exists()
    assert remembered.stats()["lookups"] - before == 1
    forgotten = mount(pacs.dicomweb_url, listing_ttl=0, cache_dir=mount.tmp_path / "cache2")  # all asked again
    series = first_file(forgotten).parent
    before = forgotten.stats()["lookups"]
    for _ in range(3):
        assert not (series / "no-such-file.dcm").exists()
    assert forgotten.stats()["lookups"] - before >= 3


def test_the_kernel_read_ahead_window_is_raised_even_on_a_mount_point_with_a_space(pacs, tmp_path, fuse_available):
    import os
    from pathlib import Path

    from tests.mounting import MountFactory

    spaced = tmp_path / "with space"
    spaced.mkdir()
    factory = MountFactory(spaced)
    try:
        mounted = factory(pacs.dicomweb_url, read_ahead_kb=768)
        device = os.stat(mounted.path).st_dev
        window = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").read_text()
        assert window.strip() == "768"
        assert first_file(mounted).read_bytes()[128:132] == b"DICM"
    finally:
        factory.unmount_all()
