"""The filesystem core over the embedded PACS: real HTTP on 127.0.0.1, no FUSE."""

from __future__ import annotations

import errno
from collections import Counter

import pytest
import trio

from tests.unit.helpers import all_files, filesystem_over, listdir, read_all, walk
from trolleyfs.errors import NotFound, PacsError, ReadOnly, TrolleyError
from trolleyfs.fs.names import patient_dir_name
from trolleyfs.model import SeriesReference
from trolleyfs.testing.data import SampleSpec, generate
from trolleyfs.testing.pacs import EmbeddedPacs


def expected_paths(pacs: EmbeddedPacs) -> set[tuple[str, str, str, str]]:
    return {
        (patient_dir_name(i.value("PatientID")), i.value("StudyInstanceUID"), i.value("SeriesInstanceUID"),
         i.value("SOPInstanceUID"))
        for i in pacs.instances.values()
    }


def uids(path: str) -> tuple[str, str, str, str]:
    _, _, patient, study, series, name = path.split("/")
    return patient, study.rsplit("_", 1)[1], series.rsplit("_", 1)[1], name[:-4].rsplit("_", 1)[1]


async def test_tree_lists_every_instance_without_downloading_any(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        files = await all_files(fs)
        assert {uids(path) for path in files} == expected_paths(pacs)
        for node in files.values():
            fs.getattr(node.inode)
    assert pacs.count("wado-rs") == 0
    assert pacs.count("wado-uri") == 0


@pytest.mark.parametrize("downloader", ["wado-rs", "wado-uri"])
async def test_reads_return_the_stored_bytes_and_open_sets_the_true_size(pacs, tmp_path, downloader):
    async with filesystem_over(pacs, tmp_path, downloader=downloader, wado_uri_url=pacs.wado_uri_url) as fs:
        files = await all_files(fs)
        for path, node in list(files.items())[:6]:
            stored = pacs.instances[uids(path)[3]].data
            assert await read_all(fs, node.inode) == stored
            assert fs.getattr(node.inode).size == len(stored)
            assert fs.getattr(node.inode).size_exact


async def test_concurrent_opens_of_one_file_share_one_download(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, readahead_max=0) as fs:
        node = next(iter((await all_files(fs)).values()))
        results = []

        async def reader() -> None:
            results.append(await read_all(fs, node.inode))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(reader)
        assert len(set(results)) == 1 and len(results) == 8
    assert pacs.count("wado-rs") == 1


async def test_listings_are_cached_for_the_ttl(pacs, tmp_path, mock_clock):
    async with filesystem_over(pacs, tmp_path, listing_ttl=60) as fs:
        patients = await walk(fs, "/patients")
        await listdir(fs, patients.inode)
        await listdir(fs, patients.inode)
        assert pacs.count("qido") == 1
        mock_clock.jump(61)
        await listdir(fs, patients.inode)
        assert pacs.count("qido") == 2


@pytest.mark.parametrize("searcher", ["qido-rs", "mint"])
async def test_patient_found_by_id_when_root_listing_is_off(tmp_path, searcher):
    odd_ids = ("A/B 1", ".hidden", "..", "100%")
    spec = SampleSpec(patients=tuple((pid, "ODD^NAME") for pid in odd_ids), studies_per_patient=1,
                      series_per_study=1, instances_per_series=1)
    with EmbeddedPacs(generate(spec)) as pacs:
        mint = {"searcher": "mint", "mint_url": f"{pacs.base_url}/mint"} if searcher == "mint" else {}
        async with filesystem_over(pacs, tmp_path, root_listing_limit=0, **mint) as fs:
            patients = await walk(fs, "/patients")
            assert await listdir(fs, patients.inode) == {}
            for pid in odd_ids:
                name = patient_dir_name(pid)
                assert "/" not in name and "\0" not in name and name not in (".", "..")
                assert not name.startswith(".")
                node = await fs.lookup(patients.inode, name)
                studies = await listdir(fs, node.inode)
                assert len(studies) == 1, pid
            with pytest.raises(NotFound):
                await fs.lookup(patients.inode, "NOPE")
            with pytest.raises(NotFound):
                await fs.lookup(patients.inode, "A%2FB%201")  # not the canonical spelling


@pytest.mark.parametrize("searcher", ["qido-rs", "mint"])
async def test_no_name_searches_without_a_key(tmp_path, searcher):
    """An empty PatientID or one with wildcards would match the whole archive (or much of it):
    no lookup searches for it; its folder is reachable only through the bounded /patients listing."""
    odd_ids = ("", "x*y?")
    spec = SampleSpec(patients=tuple((pid, "ODD^NAME") for pid in (*odd_ids, "PLAIN")), studies_per_patient=1,
                      series_per_study=1, instances_per_series=1)
    with EmbeddedPacs(generate(spec)) as pacs:
        kind = "mint" if searcher == "mint" else "qido"
        mint = {"searcher": "mint", "mint_url": f"{pacs.base_url}/mint"} if searcher == "mint" else {}
        async with filesystem_over(pacs, tmp_path / "off", root_listing_limit=0, listing_ttl=0, **mint) as fs:
            patients = await walk(fs, "/patients")
            accession = await walk(fs, "/accession")
            for name in ("%", "*", "%2A", "x%2Ay%3F", "?", "%5C"):
                with pytest.raises(NotFound):
                    await fs.lookup(patients.inode, name)
                with pytest.raises(NotFound):
                    await fs.lookup(accession.inode, name)
            assert pacs.count(kind) == 0
        async with filesystem_over(pacs, tmp_path / "on", **mint) as fs:
            patients = await walk(fs, "/patients")
            for name in ("%", "x%2Ay%3F"):  # before /patients was listed: nothing knows them, no search
                with pytest.raises(NotFound):
                    await fs.lookup(patients.inode, name)
            assert pacs.count(kind) == 0
            listed = await listdir(fs, patients.inode)
            searches = pacs.count(kind)
            for pid in odd_ids:
                node = await fs.lookup(patients.inode, patient_dir_name(pid))
                assert node.inode == listed[patient_dir_name(pid)].inode
                (study,) = (await listdir(fs, node.inode)).values()
            assert pacs.count(kind) == searches  # the patients' folders came from the listing


async def test_wado_uri_download_asks_for_instance_uids_once_per_series(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, downloader="wado-uri", wado_uri_url=pacs.wado_uri_url) as fs:
        some = next(iter(pacs.instances.values()))
        reference = SeriesReference(study_uid=some.value("StudyInstanceUID"), series_uid=some.value("SeriesInstanceUID"))
        await fs.trolley.download(reference)
        assert pacs.count("qido") == 1
        assert pacs.count("wado-uri") == 10
        await fs.trolley.download(reference)
        assert pacs.count("qido") == 1
        assert pacs.count("wado-uri") == 10


async def test_writes_are_refused_with_erofs(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        node = next(iter((await all_files(fs)).values()))
        with pytest.raises(ReadOnly) as raised:
            await fs.open(node.inode, writable=True)
        assert raised.value.errno == errno.EROFS


async def test_a_5xx_is_retried(pacs, tmp_path):
    pacs.faults.add("wado-rs", "status", status=503, count=1)
    async with filesystem_over(pacs, tmp_path, readahead_max=0) as fs:
        node = next(iter((await all_files(fs)).values()))
        assert (await read_all(fs, node.inode))[128:132] == b"DICM"
    assert pacs.count("wado-rs") == 2


@pytest.mark.parametrize("kind", ["qido", "wado-rs"])
@pytest.mark.parametrize("action", ["garbage", "hang", "status"])
async def test_a_failing_pacs_gives_eio_in_bounded_time_then_recovers(pacs, tmp_path, kind, action):
    async with filesystem_over(pacs, tmp_path, timeout=0.5, retries=1) as fs:
        patients = await walk(fs, "/patients")
        pacs.faults.add(kind, action, status=500)
        with trio.fail_after(10):
            with pytest.raises(TrolleyError) as raised:
                if kind == "qido":
                    await listdir(fs, patients.inode)
                else:
                    node = next(iter((await all_files(fs)).values()))
                    await read_all(fs, node.inode)
        assert raised.value.errno == errno.EIO
        pacs.faults.clear()
        fs.trolley.forget_searches()
        node = next(iter((await all_files(fs)).values()))
        assert (await read_all(fs, node.inode))[128:132] == b"DICM"


async def test_a_transfer_cut_off_midway_is_never_served(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        some = next(iter(pacs.instances.values()))
        reference = SeriesReference(study_uid=some.value("StudyInstanceUID"), series_uid=some.value("SeriesInstanceUID"))
        pacs.faults.add("wado-rs", "truncate", count=1)
        with pytest.raises(PacsError):
            await fs.trolley.download(reference)
        cached = [uid for uid in pacs.instances if fs.trolley.cache.get(uid)]
        assert all(fs.trolley.cache.get(uid).size == len(pacs.instances[uid].data) for uid in cached)
        assert len(cached) < 10
        assert not list((fs.trolley.cache.root / "v1" / "tmp").iterdir())
        await fs.trolley.download(reference)
        files = await all_files(fs)
        for path, node in files.items():
            if uids(path)[2] == reference.series_uid:
                assert await read_all(fs, node.inode) == pacs.instances[uids(path)[3]].data


@pytest.mark.parametrize("downloader", ["wado-rs", "wado-uri"])
async def test_opening_one_file_reads_ahead_the_rest_of_its_series_once(pacs, tmp_path, downloader):
    async with filesystem_over(pacs, tmp_path, downloader=downloader, wado_uri_url=pacs.wado_uri_url) as fs:
        files = await all_files(fs)
        first_path = next(iter(files))
        series_uid = uids(first_path)[2]
        in_series = {path: node for path, node in files.items() if uids(path)[2] == series_uid}
        queries_before = pacs.count("qido")
        for path, node in in_series.items():
            assert await read_all(fs, node.inode) == pacs.instances[uids(path)[3]].data
        if downloader == "wado-rs":
            assert pacs.count("wado-rs") == 2  # the first file, then the series
        else:
            assert pacs.count("wado-uri") == len(in_series)  # each instance once: cached ones are skipped
        assert pacs.count("qido") == queries_before  # the instance UIDs came from the listing cache
        assert fs.trolley.stats["read_aheads"] == 1


async def test_read_ahead_is_off_when_the_series_is_larger_than_readahead_max(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, readahead_max="10K") as fs:
        files = await all_files(fs)
        await read_all(fs, next(iter(files.values())).inode)
        assert fs.trolley.stats["read_aheads"] == 0
        assert pacs.count("wado-rs") == 1


async def test_a_failed_instance_by_instance_download_raises_the_pacs_error_itself(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, downloader="wado-uri", wado_uri_url=pacs.wado_uri_url, retries=0) as fs:
        some = next(iter(pacs.instances.values()))
        reference = SeriesReference(study_uid=some.value("StudyInstanceUID"), series_uid=some.value("SeriesInstanceUID"))
        pacs.faults.add("wado-uri", "status", status=500, count=1)
        with pytest.raises(PacsError):
            await fs.trolley.download(reference)


async def test_nodes_the_kernel_forgets_leave_the_inode_table_and_come_back_when_looked_up(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        handed: Counter[int] = Counter()

        async def browse(node, path: str) -> dict[str, int]:
            """Lists like the kernel's readdirplus: every entry counts as handed out."""
            found = {}
            for name, child in (await listdir(fs, node.inode)).items():  # listdir hands them out
                handed[child.inode] += 1
                found[f"{path}/{name}"] = child.inode
                if child.is_dir:
                    found |= await browse(child, f"{path}/{name}")
            return found

        before = await browse(await walk(fs, "/patients"), "/patients")
        assert len(fs.inodes) > len(pacs.instances)
        files = {path: inode for path, inode in before.items() if path.endswith(".dcm")}
        for inode in files.values():
            fs.forget(inode, handed[inode] - 1)
        assert len(fs.inodes) > len(pacs.instances)  # still known to the kernel once: kept
        for inode in files.values():
            fs.forget(inode, 1)
        assert len(fs.inodes) == len(before) - len(files) + 2  # the directories and sidecars, /, /patients
        path, inode = next(iter(files.items()))
        node = await walk(fs, path)
        fs.handed_to_kernel(node)
        assert node.inode == inode  # its directory, still known, hands out the same inode again
        assert await read_all(fs, node.inode) == pacs.instances[uids(path)[3]].data
        fs.forget(node.inode, 1)
        for inode, count in handed.items():
            if inode not in files.values():
                fs.forget(inode, count)
        assert len(fs.inodes) == 2  # /, /patients
        assert set(await browse(await walk(fs, "/patients"), "/patients")) == set(before)


async def test_an_instance_the_pacs_adds_to_a_series_answer_is_never_cached(pacs, tmp_path):
    """Security: a series answer that carries another instance's UID with other bytes (a buggy or
    hostile server) must not plant them in the cache: that instance reads as stored."""
    async with filesystem_over(pacs, tmp_path) as fs:
        files = list((await all_files(fs)).values())
        pacs.faults.add("wado-rs", "forge")  # every study or series answer carries a forged extra
        first = files[0]
        assert await read_all(fs, first.inode) == pacs.instances[first.uid].data
        await fs.trolley.download(SeriesReference(study_uid=first.reference.study_uid,
                                                  series_uid=first.reference.series_uid))
        pacs.faults.clear()
        for node in files:
            assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
        assert fs.stats()["instances_refused"] >= 1


async def test_instances_a_series_answer_leaves_out_are_fetched_singly(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        files = list((await all_files(fs)).values())
        pacs.faults.add("wado-rs", "omit-first")
        for node in files:
            assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
        assert fs.stats()["errors"] == {}


async def test_no_read_ahead_of_a_series_whose_other_files_are_all_cached(pacs, tmp_path):
    """The last file of a series a read-ahead delivers may be opened after it ended: reading the
    series again for it is a whole series downloaded for nothing."""
    async with filesystem_over(pacs, tmp_path) as fs:
        files = list((await all_files(fs)).values())
        series_uid = files[0].reference.series_uid
        series = [node for node in files if node.reference.series_uid == series_uid]
        for node in series[1:]:
            await fs.trolley.download(node.reference)
        requests, read_aheads = fs.stats()["download_requests"], fs.stats()["read_aheads"]
        assert await read_all(fs, series[0].inode) == pacs.instances[series[0].uid].data
        assert fs.stats()["read_aheads"] == read_aheads  # no read-ahead started
        assert fs.stats()["download_requests"] == requests + 1
