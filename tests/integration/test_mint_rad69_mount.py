"""MINT search and RAD-69 retrieval through a real kernel mount, against the embedded PACS.

The same PACS is mounted twice: over QIDO-RS + WADO-RS and over MINT + RAD-69, with the MINT
root as SOURCE. Both must give the same tree and the same bytes; hostile XML and broken RAD-69
answers must give EIO with nothing cached and leave the mount up (those of RAD-69 are in
test_embedded_mount.py, with the WADO-RS ones).
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time

import pytest

from tests.conftest import need_tool
from tests.integration.test_embedded_mount import soap_options
from tests.mounting import expect_eio_while_the_pacs_is_down


def soap_mount(mount, pacs, **options):
    return mount(f"{pacs.base_url}/mint", cache_dir=mount.tmp_path / "soap-cache", **soap_options(pacs), **options)


def digests(mounted) -> dict[str, tuple[str, int]]:
    """Each file's digest and then its size (exact once read; before, an estimate)."""
    found = {}
    for path in mounted.files():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(mounted.path))] = (digest, path.stat().st_size)
    return found


def test_mint_and_rad69_give_the_same_tree_and_bytes_as_qido_and_wado_rs(mount, pacs):
    soap = soap_mount(mount, pacs)
    assert soap.stats()["searcher"] == "mint" and soap.stats()["downloader"] == "rad69"
    soap_files = digests(soap)
    assert pacs.count("qido") == pacs.count("wado-rs") == 0  # no DICOMweb endpoint asked, not even probed
    assert soap_files == digests(mount(pacs.dicomweb_url))
    stored = {hashlib.sha256(i.data).hexdigest() for i in pacs.instances.values()}
    assert {digest for digest, _ in soap_files.values()} == stored
    assert pacs.count("rad69") < len(pacs.instances)  # whole series per request, not one by one
    dump = subprocess.run([need_tool("dcmdump"), str(soap.files()[0])], capture_output=True, text=True, check=True)
    assert "(0008,0018)" in dump.stdout


@pytest.mark.parametrize("action", ["xml-bomb", "xml-external", "garbage", "status"])
def test_a_hostile_or_broken_mint_answer_gives_eio_and_the_mount_stays_up(mount, pacs, action):
    mounted = soap_mount(mount, pacs, retries=0, listing_ttl=0)
    pacs.faults.add("mint", action, status=500)
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        list(mounted.patients.iterdir())
    assert raised.value.errno == errno.EIO
    assert time.monotonic() - started < 5
    assert mounted.process.poll() is None and mounted.stats()["errors"]
    pacs.faults.clear()
    assert len(mounted.files()) == len(pacs.instances)


def test_a_stalled_rad69_transfer_gives_eio_within_the_timeout(mount, pacs):
    mounted = soap_mount(mount, pacs, retries=0, timeout=1)
    files = mounted.files()
    files[0].read_bytes()  # the read-ahead of the rest of the series is under way or done
    pacs.faults.add("rad69", "stall")
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        next(path for path in mounted.files() if path.parent != files[0].parent).read_bytes()
    pacs.faults.clear()
    assert raised.value.errno == errno.EIO
    assert time.monotonic() - started < 8


def test_ls_lR_and_find_download_nothing(mount, pacs):
    mounted = soap_mount(mount, pacs)
    listing = subprocess.run(["ls", "-lR", str(mounted.patients)], capture_output=True, text=True, check=True)
    assert listing.stdout.count(".dcm") == len(pacs.instances)
    subprocess.run(["find", str(mounted.patients), "-name", "*.dcm", "-size", "+1k"], capture_output=True, check=True)
    assert pacs.count("rad69") == 0 and mounted.stats()["instances_downloaded"] == 0


def test_fstat_after_open_gives_the_true_size_and_reads_and_restarts_are_served_from_the_cache(mount, pacs):
    mounted = soap_mount(mount, pacs, readahead_max=0)
    path = mounted.files()[3]
    stored = pacs.instances[path.name[:-4].rsplit("_", 1)[1]].data
    with open(path, "rb") as handle:
        assert os.fstat(handle.fileno()).st_size == len(stored) == handle.seek(0, os.SEEK_END)
        handle.seek(0)
        assert handle.read() == stored
    assert path.read_bytes() == stored
    assert pacs.count("rad69") == 1
    assert mounted.unmount() == 0
    again = soap_mount(mount, pacs, readahead_max=0)
    assert (again.path / path.relative_to(mounted.path)).read_bytes() == stored
    assert pacs.count("rad69") == 1 and again.stats()["download_requests"] == 0


def test_a_stopped_pacs_gives_eio_in_time_and_the_mount_recovers(mount, pacs):
    mounted = soap_mount(mount, pacs, timeout=2, retries=1, listing_ttl=0)
    expect_eio_while_the_pacs_is_down(mounted, pacs.stop, pacs.start)
    assert len(list(mounted.patients.iterdir())) == len({i.value("PatientID") for i in pacs.instances.values()})
