"""trolleyfs over real PACSs, through a real kernel mount: one test body for every searcher and
downloader combination over Orthanc (QIDO-RS / C-FIND × WADO-RS / WADO-URI / C-GET / C-MOVE), and
for C-FIND with C-GET and C-MOVE over DCMTK's stricter dcmqrscp. The tests below those are
Orthanc's alone."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import need_tool
from tests.mounting import expect_eio_while_the_pacs_is_down
from trolleyfs.fs.names import patient_dir_name


def uid_of(name: str) -> str:
    return name.removesuffix(".dcm").rsplit("_", 1)[-1]


def tree_of(mounted) -> set[tuple[str, str, str, str]]:
    return {
        (path.parts[-4], uid_of(path.parts[-3]), uid_of(path.parts[-2]), uid_of(path.name))
        for path in mounted.files()
    }


def expected_tree(instances: list[dict]) -> set[tuple[str, str, str, str]]:
    return {
        (patient_dir_name(i["PatientID"]), i["StudyInstanceUID"], i["SeriesInstanceUID"], i["SOPInstanceUID"])
        for i in instances
    }


def path_of(mounted, instance: dict) -> Path:
    matches = [p for p in mounted.files() if uid_of(p.name) == instance["SOPInstanceUID"]]
    assert len(matches) == 1
    return matches[0]


def assert_same_instance(backend, actual: bytes, stored: bytes) -> None:
    if backend.exact_bytes:
        assert hashlib.sha256(actual).hexdigest() == hashlib.sha256(stored).hexdigest()
    else:  # Orthanc's DIMSE side re-encodes the stored dataset; pixel data and identity are equal
        ours, theirs = (pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)) for data in (actual, stored))
        assert ours.SOPInstanceUID == theirs.SOPInstanceUID
        assert ours.PixelData == theirs.PixelData


def test_tree_matches_the_pacs_exactly(mount, backend, stored_instances):
    mounted = mount(backend.source, **backend.options)
    assert len(mounted.files()) == len(stored_instances)
    assert tree_of(mounted) == expected_tree(stored_instances)
    assert sorted(p.name for p in mounted.patients.iterdir()) == sorted(
        {patient_dir_name(i["PatientID"]) for i in stored_instances}
    )


def test_every_file_holds_the_stored_instance(mount, backend, stored_instances):
    mounted = mount(backend.source, **backend.options)
    by_uid = {uid_of(p.name): p for p in mounted.files()}
    for instance in stored_instances:
        assert_same_instance(backend, by_uid[instance["SOPInstanceUID"]].read_bytes(), backend.server.file(instance["id"]))
    series_count = len({i["SeriesInstanceUID"] for i in stored_instances})
    stats = mounted.stats()
    failures = [line for line in mounted.log_text().splitlines() if "read-ahead of series" in line]
    assert stats["read_aheads"] == series_count, failures  # a failed read-ahead is tried again: say why
    if backend.per_instance:
        assert stats["download_requests"] == len(stored_instances)  # each instance once, never twice
    else:
        assert stats["download_requests"] <= 2 * series_count  # the first file, then the series at once


def test_single_instances_are_fetched_without_read_ahead(mount, backend, stored_instances):
    mounted = mount(backend.source, readahead_max=0, **backend.options)
    for instance in stored_instances[::20]:
        assert_same_instance(backend, path_of(mounted, instance).read_bytes(), backend.server.file(instance["id"]))
    assert mounted.stats()["download_requests"] == len(stored_instances[::20])


def test_ls_lR_and_find_download_nothing(mount, backend, stored_instances):
    mounted = mount(backend.source, **backend.options)
    listing = subprocess.run(["ls", "-lR", str(mounted.patients)], capture_output=True, text=True, check=True)
    assert listing.stdout.count(".dcm") == len(stored_instances)
    subprocess.run(["find", str(mounted.patients), "-name", "*.dcm", "-size", "+1k"], capture_output=True, check=True)
    for path in mounted.files()[:5]:
        os.stat(path)
    stats = mounted.stats()
    assert stats["download_requests"] == 0
    assert stats["instances_downloaded"] == 0


def test_second_read_is_served_from_the_cache(mount, backend, stored_instances):
    mounted = mount(backend.source, readahead_max=0, **backend.options)
    path = path_of(mounted, stored_instances[0])
    first = path.read_bytes()
    assert mounted.stats()["download_requests"] == 1
    assert path.read_bytes() == first
    stats = mounted.stats()
    assert stats["download_requests"] == 1
    assert stats["cache_hits"] >= 1


def test_fstat_after_open_and_seek_to_end_give_the_true_size(mount, backend, stored_instances):
    mounted = mount(backend.source, **backend.options)
    instance = stored_instances[3]
    path = path_of(mounted, instance)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        assert handle.seek(0, os.SEEK_END) == size
        handle.seek(0)
        content = handle.read()
    assert len(content) == size == path.stat().st_size
    assert_same_instance(backend, content, backend.server.file(instance["id"]))


def test_dcmdump_and_pydicom_read_files_in_place(mount, backend, stored_instances):
    dcmdump = need_tool("dcmdump")
    mounted = mount(backend.source, **backend.options)
    instance = stored_instances[5]
    path = path_of(mounted, instance)
    dump = subprocess.run([dcmdump, str(path)], capture_output=True, text=True, check=True).stdout
    assert instance["SOPInstanceUID"] in dump
    dataset = pydicom.dcmread(path)
    assert dataset.SOPInstanceUID == instance["SOPInstanceUID"]
    reference = pydicom.dcmread(pydicom.filebase.DicomBytesIO(backend.server.file(instance["id"])))
    assert (dataset.pixel_array == reference.pixel_array).all()


def test_stopped_pacs_gives_eio_in_time_and_the_mount_recovers(mount, backend, stored_instances):
    mounted = mount(backend.source, timeout=2, retries=1, listing_ttl=0, **backend.options)
    expect_eio_while_the_pacs_is_down(mounted, backend.server.stop, backend.server.start)
    assert len(list(mounted.patients.iterdir())) == len({i["PatientID"] for i in stored_instances})


def test_restarted_daemon_reuses_its_cache(mount, backend, stored_instances):
    first = mount(backend.source, readahead_max=0, **backend.options)
    contents = {path.name: path.read_bytes() for path in first.files()[:6]}
    assert first.unmount() == 0
    second = mount(backend.source, readahead_max=0, **backend.options)
    for path in second.files():
        if path.name in contents:
            assert path.read_bytes() == contents[path.name]
    assert second.stats()["download_requests"] == 0
    assert second.stats()["cache_files"] == 6


@pytest.mark.parametrize(
    "command",
    [
        ["touch", "{dir}/new.dcm"],
        ["mkdir", "{dir}/newdir"],
        ["rm", "-f", "{file}"],
        ["mv", "{file}", "{dir}/renamed.dcm"],
        ["chmod", "600", "{file}"],
        ["sh", "-c", "echo x >> '{file}'"],
    ],
)
def test_changes_are_refused_with_erofs(mount, orthanc, command):
    mounted = mount(orthanc.dicomweb_url)
    file = mounted.files()[0]
    argv = [part.format(dir=file.parent, file=file) for part in command]
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    assert file.exists()


def test_opening_for_write_gives_erofs(mount, orthanc):
    mounted = mount(orthanc.dicomweb_url)
    with pytest.raises(OSError) as raised:
        open(mounted.files()[0], "r+b")
    assert raised.value.errno == errno.EROFS


@pytest.mark.parametrize("backend", ["qido+wado-rs", "cfind+cget", "dcmqrscp:cfind+cget"], indirect=True)
def test_patient_is_found_by_patient_id_when_the_root_listing_is_empty(mount, backend, stored_instances):
    mounted = mount(backend.source, root_listing_limit=0, **backend.options)
    assert list(mounted.patients.iterdir()) == []
    odd = next(i for i in stored_instances if i["PatientID"] == "ODD/ID 7")
    patient_dir = mounted.patients / patient_dir_name("ODD/ID 7")
    studies = sorted(uid_of(p.name) for p in patient_dir.iterdir())
    assert odd["StudyInstanceUID"] in studies
    assert not (mounted.patients / "NO-SUCH-PATIENT").exists()


def test_series_read_ahead_gives_the_same_bytes_in_two_requests_per_series(mount, orthanc, orthanc_instances):
    mounted = mount(orthanc.dicomweb_url)
    by_uid = {uid_of(p.name): p for p in mounted.files()}
    for instance in orthanc_instances:
        assert by_uid[instance["SOPInstanceUID"]].read_bytes() == orthanc.file(instance["id"])
    series_count = len({i["SeriesInstanceUID"] for i in orthanc_instances})
    stats = mounted.stats()
    assert stats["read_aheads"] == series_count
    assert stats["download_requests"] == 2 * series_count


def test_mount_without_f_returns_when_ready_and_umount_ends_the_daemon(orthanc, orthanc_patients, fuse_available, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    command = [sys.executable, "-m", "trolleyfs", "mount", orthanc.dicomweb_url, str(mountpoint),
               "-o", f"cache_dir={tmp_path / 'cache'}"]
    subprocess.run(command, check=True, timeout=60)
    daemons = subprocess.run(["pgrep", "-f", f"trolleyfs mount .* {mountpoint}"], capture_output=True, text=True)
    pids = daemons.stdout.split()
    assert pids
    try:
        assert os.path.ismount(mountpoint)
        assert len(list((mountpoint / "patients").iterdir())) == orthanc_patients
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert _exits(pids)
    assert not os.path.ismount(mountpoint)


def _exits(pids: list[str], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_sigterm_unmounts_a_foreground_daemon_cleanly(mount, orthanc):
    mounted = mount(orthanc.dicomweb_url)
    mounted.process.terminate()
    assert mounted.process.wait(30) == 0
    assert not os.path.ismount(mounted.path)


def test_fusermount_u_ends_the_daemon_cleanly(mount, orthanc):
    mounted = mount(orthanc.dicomweb_url)
    assert mounted.unmount() == 0
