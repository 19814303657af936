"""DIMSE failures through a real mount: refused associations, failure statuses, a peer that
hangs or goes away mid-transfer, and an unknown C-MOVE destination. Listings come from the
embedded PACS (QIDO-RS) where the fault is in the download."""

from __future__ import annotations

import errno
import struct
import time

import pytest

from tests.dimse_peer import FakeDimsePeer
from tests.memory_sink import MemorySink


def dataset_bytes(part10: bytes) -> bytes:
    """What follows the file meta group: the dataset as encoded."""
    assert part10[128:132] == b"DICM"
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length :]


@pytest.fixture
def peer(sample_files):
    return FakeDimsePeer(sample_files)


def stored(pacs, path) -> bytes:
    return next(i.data for uid, i in pacs.instances.items() if path.name[:-4].endswith(uid))


def test_c_get_files_keep_the_dataset_bytes_as_sent(mount, pacs, peer):
    with peer:
        mounted = mount(pacs.dicomweb_url, downloader="c-get", qr_url=peer.url)
        for path in mounted.files()[:12]:
            assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored(pacs, path))


def test_a_refused_association_fails_the_mount_with_a_clear_error(mount, peer):
    peer.mode = "reject"
    with peer:
        with pytest.raises(RuntimeError, match="rejected"):
            mount(peer.url, timeout=2, retries=0)


def test_a_refused_association_after_mounting_gives_eio_and_the_mount_stays_up(mount, pacs, peer):
    with peer:
        mounted = mount(pacs.dicomweb_url, searcher="dicom-qr", qr_url=peer.url, timeout=2, retries=0, listing_ttl=0)
        assert len(list(mounted.patients.iterdir())) == 2
    peer.mode = "reject"
    with peer:
        with pytest.raises(OSError) as raised:
            list(mounted.patients.iterdir())
        assert raised.value.errno == errno.EACCES
        assert (mounted.path / ".trolleyfs" / "stats").exists()
        assert "rejected" in mounted.log_text()


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_failing_or_silent_c_find_gives_eio_in_time(mount, peer, mode):
    peer.mode = mode
    with peer:
        mounted = mount(peer.url, timeout=1, retries=0)
        started = time.monotonic()
        with pytest.raises(OSError) as raised:
            list(mounted.patients.iterdir())
        assert raised.value.errno == errno.EIO
        assert time.monotonic() - started < 10


def test_a_silent_pacs_does_not_hold_the_mount_past_start_timeout(mount, peer):
    """The start-up question to the PACS gets half of start_timeout: with timeout=30 a silent
    PACS would hold it for minutes (the search bound), and mount(8) with it."""
    peer.mode = "hang"
    with peer:
        started = time.monotonic()
        mounted = mount(peer.url, timeout=30, start_timeout=6, ready_timeout=20)
        assert time.monotonic() - started < 15
        assert "mounting anyway" in mounted.log_text()


def test_a_failure_status_of_c_get_gives_eio_then_recovers(mount, pacs, peer):
    with peer:
        mounted = mount(pacs.dicomweb_url, downloader="c-get", qr_url=peer.url, readahead_max=0)
        path = mounted.files()[0]
        peer.mode = "fail"
        with pytest.raises(OSError) as raised:
            path.read_bytes()
        assert raised.value.errno == errno.EIO
        peer.mode = "normal"
        assert path.read_bytes() == path.read_bytes()
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored(pacs, path))


def test_a_peer_gone_mid_transfer_gives_eio_and_no_partial_file(mount, pacs, peer):
    with peer:
        mounted = mount(pacs.dicomweb_url, downloader="c-get", qr_url=peer.url, timeout=2, retries=0)
        files = mounted.files()
        peer.mode = "abort-after-0"
        with pytest.raises(OSError) as raised:
            files[0].read_bytes()
        assert raised.value.errno == errno.EIO
        assert mounted.stats()["cache_files"] == 0
        peer.mode = "abort-after-3"  # the first file comes; the series read-ahead is cut off after 3
        files[0].read_bytes()
        series = [path for path in files if path.parent == files[0].parent]
        for path in series:  # files the read-ahead missed are fetched one by one
            assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored(pacs, path))
        assert "read-ahead" in mounted.log_text()


def test_an_unknown_move_destination_gives_eio(mount, orthanc, orthanc_patients):
    mounted = mount(
        f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        downloader="c-move", calling_aet="NOBODY", move_port=orthanc.move_port, timeout=5, retries=0,
    )
    with pytest.raises(OSError) as raised:
        mounted.files()[0].read_bytes()
    assert raised.value.errno == errno.EIO
    assert "0xC000" in mounted.log_text() or "0xA801" in mounted.log_text()
    assert len(list(mounted.patients.iterdir())) == orthanc_patients


def test_browsing_reuses_c_find_associations(mount, peer):
    with peer:
        mounted = mount(peer.url)
        files = mounted.files()
        searches = mounted.stats()["searches"]
        assert len(files) == 80 and searches > 10
        assert peer.associations <= 3


async def test_a_cancelled_search_aborts_its_association(peer):
    import trio

    from trolleyfs.backends.dicom_qr import DicomQR
    from trolleyfs.backends.dimse import DimsePeer
    from trolleyfs.config import parse_dimse_url
    from trolleyfs.model import Query

    peer.mode = "hang"
    with peer:
        dimse = DimsePeer(parse_dimse_url(peer.url), calling_aet="TEST", acse_timeout=5, dimse_timeout=30,
                          network_timeout=30)
        with trio.move_on_after(0.5) as scope:
            await DicomQR(dimse).find_studies(Query())
        assert scope.cancelled_caught
        with trio.fail_after(10):
            await peer.aborted.wait()


async def test_overlapping_c_moves_each_get_their_own_instances(peer):
    """Security: the results of a C-MOVE are routed by its message ID, not by which waiting move
    wants a UID first. A study move and a move of one of its series overlap, and the PACS sends
    the series first: each must still get exactly its own instances."""
    import trio

    from trolleyfs.backends.dimse import DimsePeer
    from trolleyfs.backends.dimse_retrieve import CMove, StorageSCP
    from trolleyfs.config import parse_dimse_url
    from trolleyfs.model import SeriesReference, StudyReference
    from trolleyfs.testing.orthanc import free_port

    peer.mode = "crossed-moves"
    study_uid = str(peer.datasets[0].StudyInstanceUID)
    series_uid = str(peer.datasets[0].SeriesInstanceUID)
    in_study = {str(ds.SOPInstanceUID) for ds in peer.datasets if ds.StudyInstanceUID == study_uid}
    in_series = {str(ds.SOPInstanceUID) for ds in peer.datasets if ds.SeriesInstanceUID == series_uid}
    assert in_series < in_study
    port = free_port()
    peer.move_destination = ("127.0.0.1", port)
    with peer:
        dimse = DimsePeer(parse_dimse_url(peer.url), calling_aet="TROLLEY", acse_timeout=5, dimse_timeout=30,
                          network_timeout=30)
        scp = StorageSCP("TROLLEY", "127.0.0.1", port, dimse)
        scp.start()
        try:
            move = CMove(dimse, scp)
            study_sink, series_sink = MemorySink(), MemorySink()
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(move.fetch, StudyReference(study_uid=study_uid), study_sink)
                    await trio.to_thread.run_sync(peer.move_arrived.acquire)
                    nursery.start_soon(
                        move.fetch, SeriesReference(study_uid=study_uid, series_uid=series_uid), series_sink
                    )
        finally:
            scp.stop()
            dimse.close()
    assert series_sink.uids == in_series
    assert study_sink.uids == in_study


def test_pending_status_ff01_means_more_results_too(mount, peer):
    """0xFF01: pending, but the peer does not support some optional keys we asked for."""
    peer.mode = "pending-ff01"
    with peer:
        assert len(mount(peer.url).files()) == len(peer.datasets)


def test_an_idle_c_find_association_is_released_not_left_to_time_out(mount, peer):
    with peer:
        mounted = mount(peer.url, dimse_idle_time=0.5)
        list(mounted.patients.iterdir())
        assert peer.association_released.wait(20)  # without the reaper: aborted after network_timeout
        assert peer.aborts == 0
        assert "ERROR" not in mounted.log_text()


def test_c_get_proposes_the_stored_syntaxes_of_the_classes_a_modality_implies_and_never_deflate():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from trolleyfs.backends.dimse_retrieve import COMMON, storage_contexts

    contexts = storage_contexts((), ("CT",))
    assert len(contexts) <= 127
    ct_syntaxes = [c.transfer_syntax[0] for c in contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2"]
    assert ct_syntaxes == [str(s) for s in COMMON]  # one context per syntax: the PACS sends what it stores
    assert all(DeflatedExplicitVRLittleEndian not in c.transfer_syntax for c in storage_contexts(("1.2.3",), ("MR",)))


@pytest.mark.parametrize("level", ["SERIES", "INSTANCE"])
async def test_searches_without_the_parent_uid_are_asked_level_by_level(peer, level):
    """A strict Q/R SCP (dcmqrscp) refuses a SERIES search without StudyInstanceUID and an IMAGE
    search without SeriesInstanceUID: they are asked hierarchically, as the baseline has it."""
    from trolleyfs.backends.dicom_qr import DicomQR
    from trolleyfs.backends.dimse import DimsePeer
    from trolleyfs.config import parse_dimse_url
    from trolleyfs.model import Query, QueryLevel

    peer.mode = "strict-hierarchy"
    patient_id = str(peer.datasets[0].PatientID)
    mine = [ds for ds in peer.datasets if ds.PatientID == patient_id]
    with peer:
        dimse = DimsePeer(parse_dimse_url(peer.url), calling_aet="TEST", acse_timeout=5, dimse_timeout=10,
                          network_timeout=10)
        try:
            studies = await DicomQR(dimse).find_studies(Query(PatientID=patient_id, query_level=QueryLevel[level]))
        finally:
            dimse.close()
    found_series = {series.uid for study in studies for series in study.series}
    assert found_series == {str(ds.SeriesInstanceUID) for ds in mine}
    if level == "INSTANCE":
        found = {instance.uid for study in studies for series in study.series for instance in series.instances}
        assert found == {str(ds.SOPInstanceUID) for ds in mine}
    assert all(study.attributes.get("PatientID") == patient_id for study in studies)


def test_a_c_find_peer_refusing_return_keys_still_lists_and_reads(mount, pacs, peer):
    peer.mode = "refuse-return-keys"
    with peer:
        mounted = mount(peer.url)
        files = mounted.files()
        assert len(files) == len(peer.datasets)
        assert files[0].read_bytes()[128:132] == b"DICM"
        assert "asking without them" in mounted.log_text()


def test_answers_without_sop_class_description_or_rows_still_name_size_and_download(mount, pacs, peer):
    """As dcmqrscp answers: no SOPClassUID, SeriesDescription or Rows. C-GET then proposes the
    storage classes the series' Modality implies."""
    peer.mode = "minimal-answers"
    with peer:
        mounted = mount(peer.url, calling_aet="TROLLEY")
        files = mounted.files()
        assert len(files) == len(peer.datasets)
        assert all(path.stat().st_size > 0 for path in files)  # estimated without Rows x Columns
        for path in files[:: max(1, len(files) // 6)]:
            data = path.read_bytes()
            assert dataset_bytes(data) == dataset_bytes(stored(pacs, path))
            assert path.stat().st_size == len(data)
