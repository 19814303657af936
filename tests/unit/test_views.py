"""The views (/studies, /accession, /dates, /query), sidecars, xattrs and naming templates of the
filesystem core over the embedded PACS (real HTTP on 127.0.0.1, no FUSE); answers that are cut."""

from __future__ import annotations

import json
import logging

import pytest

from tests.unit.helpers import all_files, filesystem_over, listdir, read_all, walk
from trolleyfs.errors import InvalidQuery, NoAttribute, NotFound, PacsError
from trolleyfs.fs.names import patient_dir_name
from trolleyfs.testing.data import SampleSpec, generate
from trolleyfs.testing.pacs import EmbeddedPacs

SEARCHERS = {"qido-rs": ("qido", {}), "mint": ("mint", None)}


def searcher_options(pacs: EmbeddedPacs, searcher: str) -> tuple[str, dict]:
    if searcher == "mint":
        return "mint", {"searcher": "mint", "mint_url": f"{pacs.base_url}/mint"}
    return "qido", {}


def studies_by(pacs: EmbeddedPacs, keyword: str) -> dict[str, set[str]]:
    """Ground truth from the stored files: value of ``keyword`` -> its studies' UIDs."""
    found: dict[str, set[str]] = {}
    for instance in pacs.instances.values():
        found.setdefault(instance.value(keyword), set()).add(instance.value("StudyInstanceUID"))
    return found


def instances_of(pacs: EmbeddedPacs, study_uids: set[str]) -> set[str]:
    return {uid for uid, i in pacs.instances.items() if i.value("StudyInstanceUID") in study_uids}


def shown_instances(files: dict) -> set[str]:
    return {node.uid for path, node in files.items()}


@pytest.mark.parametrize("searcher", ["qido-rs", "mint"])
async def test_studies_by_uid_cost_two_searches_and_no_download(pacs, tmp_path, searcher):
    kind, options = searcher_options(pacs, searcher)
    study_uid = next(iter(pacs.instances.values())).value("StudyInstanceUID")
    async with filesystem_over(pacs, tmp_path, **options) as fs:
        study = await walk(fs, f"/studies/{study_uid}")
        entries = await listdir(fs, study.inode)
        assert pacs.count(kind) <= 2 and pacs.count("wado-rs") == 0
        series = {i.value("SeriesInstanceUID") for i in pacs.instances.values() if i.value("StudyInstanceUID") == study_uid}
        assert {name.rsplit("_", 1)[-1] for name in entries if name not in ("study.json", "preview.png")} == series
        assert "study.json" in entries
        with pytest.raises(NotFound):
            await walk(fs, "/studies/1.2.3.999")
        with pytest.raises(NotFound):
            await walk(fs, "/studies/1.2.*")


@pytest.mark.parametrize("searcher", ["qido-rs", "mint"])
async def test_each_view_lists_exactly_its_studies_with_one_cache_entry_per_instance(pacs, tmp_path, searcher):
    kind, options = searcher_options(pacs, searcher)
    by_accession, by_date = studies_by(pacs, "AccessionNumber"), studies_by(pacs, "StudyDate")
    async with filesystem_over(pacs, tmp_path, readahead_max=0, **options) as fs:
        assert await listdir(fs, (await walk(fs, "/accession")).inode) == {}
        for accession, uids in by_accession.items():
            assert shown_instances(await all_files(fs, f"/accession/{accession}")) == instances_of(pacs, uids)
        for date, uids in by_date.items():
            day = f"/dates/{date[:4]}/{date[4:6]}/{date[6:]}"
            assert shown_instances(await all_files(fs, day)) == instances_of(pacs, uids)
        assert shown_instances(await all_files(fs, "/dates/2024/01/01")) == set()
        doe = studies_by(pacs, "PatientName")["DOE^JOHN"]
        mr = {i.value("StudyInstanceUID") for i in pacs.instances.values() if i.value("Modality") == "MR"}
        query = "/query/PatientName=DOE*&ModalitiesInStudy=MR&StudyDate=20240101-20241231"
        assert shown_instances(await all_files(fs, query)) == instances_of(pacs, doe & mr)
        assert len(await listdir(fs, (await walk(fs, "/query/PatientName=*&limit=1")).inode)) == 1
        assert pacs.count("wado-rs") == 0
        # one instance, three paths, one download
        some = next(iter(pacs.instances.values()))
        study_uid = some.value("StudyInstanceUID")
        paths = [f"/studies/{study_uid}", f"/accession/{some.value('AccessionNumber')}",
                 f"/patients/{patient_dir_name(some.value('PatientID'))}"]
        contents = set()
        for top in paths:
            files = await all_files(fs, top)
            (node,) = [node for node in files.values() if node.uid == some.value("SOPInstanceUID")]
            contents.add(await read_all(fs, node.inode))
        assert contents == {some.data}
        assert pacs.count("wado-rs") == 1


async def test_calendar_folders_run_no_search(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, dates_from=2020) as fs:
        years = await listdir(fs, (await walk(fs, "/dates")).inode)
        assert "2020" in years and "2019" not in years and "2024" in years
        assert list(await listdir(fs, (await walk(fs, "/dates/2024")).inode)) == [f"{m:02d}" for m in range(1, 13)]
        assert len(await listdir(fs, (await walk(fs, "/dates/2024/02")).inode)) == 29
        await walk(fs, "/dates/1985/06")  # outside the listed years, still reachable
        for bad in ("/dates/24", "/dates/2024/13", "/dates/2023/02/29", "/dates/x", "/dates/\u00b2\u00b3\u2074\u2075",
                    "/dates/0000"):
            with pytest.raises(NotFound):
                await walk(fs, bad)
        assert pacs.count("qido") == 0


@pytest.mark.parametrize("name, message", [
    ("Foo=1", "not a query key"),
    ("PatientSex=F", "key 'PatientSex' is not a query key"),
    ("StudyDate=2024", "StudyDate must be YYYYMMDD"),
    ("StudyDate=20240230", "not a real date"),
    ("StudyDate=20240301-20240101", "starts after it ends"),
    ("PatientBirthDate=1970", "PatientBirthDate must be"),
    ("PatientName=", "empty value"),
    ("limit=5", "whole archive"),
    ("PatientID=1&limit=0", "at least 1"),
    ("PatientID=1&PatientID=2", "given twice"),
    ("PatientName=DOE%41", "% must start"),
    ("DOE", "Key=Value"),
    ("PatientID=X&limit=\u00b2", "whole number"),
    ("StudyDate=\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661", "StudyDate must be"),
])
async def test_malformed_query_names_are_einval_and_never_searched(pacs, tmp_path, name, message, caplog):
    async with filesystem_over(pacs, tmp_path) as fs:
        query = await walk(fs, "/query")
        with pytest.raises(InvalidQuery, match=message) as raised:
            await fs.lookup(query.inode, name)
        assert raised.value.errno == 22
        assert "DOE" not in str(raised.value)  # the message names rules and keys, never values
    assert pacs.count("qido") == 0


async def test_query_readme_explains_the_syntax(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        entries = await listdir(fs, (await walk(fs, "/query")).inode)
        assert list(entries) == ["README.txt"]
        text = (await read_all(fs, entries["README.txt"].inode)).decode()
        assert "PatientName=DOE*&ModalitiesInStudy=CT" in text and "%2F" in text
        assert entries["README.txt"].size == len(text.encode())


async def test_sidecars_are_the_search_answers_in_dicom_json(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        some = next(iter(pacs.instances.values()))
        study = await walk(fs, f"/studies/{some.value('StudyInstanceUID')}")
        entries = await listdir(fs, study.inode)
        sidecar = entries["study.json"]
        data = await read_all(fs, sidecar.inode)
        assert fs.getattr(sidecar.inode).size == len(data) and await read_all(fs, sidecar.inode) == data
        dataset = json.loads(data)
        assert dataset["0020000D"]["Value"] == [some.value("StudyInstanceUID")]
        assert dataset["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": some.value("PatientName")}]}
        assert dataset["00080050"]["Value"] == [some.value("AccessionNumber")]
        series_dir = next(node for name, node in entries.items() if name.endswith(some.value("SeriesInstanceUID")))
        series_entries = await listdir(fs, series_dir.inode)
        document = json.loads(await read_all(fs, series_entries["series.json"].inode))
        assert document["series"]["0020000E"]["Value"] == [some.value("SeriesInstanceUID")]
        uids = {dataset["00080018"]["Value"][0] for dataset in document["instances"]}
        assert uids == {node.uid for name, node in series_entries.items() if name.endswith(".dcm")}
    assert pacs.count("wado-rs") == 0


async def test_xattrs_show_searched_tags_and_the_header_once_cached(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, readahead_max=0) as fs:
        some = next(iter(pacs.instances.values()))
        patient = await walk(fs, f"/patients/{patient_dir_name(some.value('PatientID'))}")
        assert await fs.getxattr(patient.inode, "user.dicom.PatientName") == some.value("PatientName").encode()
        study = await walk(fs, f"/studies/{some.value('StudyInstanceUID')}")
        assert await fs.getxattr(study.inode, "user.dicom.PatientID") == some.value("PatientID").encode()
        assert "user.dicom.StudyDate" in await fs.listxattr(study.inode)
        node = next(n for n in (await all_files(fs, f"/studies/{some.value('StudyInstanceUID')}")).values()
                    if n.uid == some.value("SOPInstanceUID"))
        before = await fs.listxattr(node.inode)
        assert "user.dicom.SOPInstanceUID" in before and "user.dicom.Manufacturer" not in before
        with pytest.raises(NoAttribute):
            await fs.getxattr(node.inode, "user.dicom.Manufacturer")
        assert pacs.count("wado-rs") == 0  # no xattr read downloads
        await read_all(fs, node.inode)
        assert await fs.getxattr(node.inode, "user.dicom.Manufacturer") == str(some.header.Manufacturer).encode()
        assert await fs.getxattr(node.inode, "user.dicom.ImagePositionPatient") == b"0.0\\0.0\\" + (
            str(some.header.ImagePositionPatient[2]).encode())
        # a person name from the header is one value, not its letters
        assert await fs.getxattr(node.inode, "user.dicom.PatientName") == some.value("PatientName").encode()


async def test_naming_templates_name_entries_and_uids_stay_reachable(pacs, tmp_path):
    options = {"study_name": "{StudyDescription}", "series_name": "S{SeriesNumber:02}_{Modality}",
               "instance_name": "{InstanceNumber:03}"}
    async with filesystem_over(pacs, tmp_path, **options) as fs:
        some = next(iter(pacs.instances.values()))
        patient = await walk(fs, f"/patients/{patient_dir_name(some.value('PatientID'))}")
        studies = await listdir(fs, patient.inode)
        assert set(studies) <= {"CHEST CT", "BRAIN MR", "CHEST CT~2", "BRAIN MR~2"}
        study = await walk(fs, f"/studies/{some.value('StudyInstanceUID')}")
        series = await listdir(fs, study.inode)
        assert set(series) == {"S01_CT", "S02_MR", "study.json", "preview.png"}
        series_dir = series[f"S{int(some.value('SeriesNumber')):02}_{some.value('Modality')}"]
        files = await listdir(fs, series_dir.inode)
        assert f"{int(some.value('InstanceNumber')):03}.dcm" in files
        by_uid = await fs.lookup(series_dir.inode, some.value("SOPInstanceUID") + ".dcm")
        assert await read_all(fs, by_uid.inode) == some.data
        series_by_uid = await fs.lookup(study.inode, some.value("SeriesInstanceUID"))
        assert series_by_uid.inode != series_dir.inode  # a folder of its own: a directory has one name
        assert set(await listdir(fs, series_by_uid.inode)) == set(files)


BIG_SERIES = SampleSpec(patients=(("BIG", "BIG^SERIES"),), studies_per_patient=1, series_per_study=1,
                        instances_per_series=130, rows=8, columns=8)


@pytest.mark.parametrize("warning", [True, False])
async def test_a_pacs_that_caps_its_pages_is_paged_to_the_end(tmp_path, warning):
    with EmbeddedPacs(generate(BIG_SERIES)) as pacs:
        pacs.qido_page_cap, pacs.qido_cap_warning = 60, warning
        async with filesystem_over(pacs, tmp_path) as fs:
            assert shown_instances(await all_files(fs)) == set(pacs.instances)
            assert fs.stats()["listings_truncated"] == 0


@pytest.mark.parametrize("cap, ignores_offset, ends_at, complete", [
    (None, True, None, True),   # ignores offset but sent everything at once: whole
    (60, True, None, False),    # ignores offset and caps: the same page again, cut
    (60, False, 60, False),     # says Warning 299, then has no next page: cut
])
async def test_a_pacs_that_pages_wrongly_is_never_passed_off_as_whole(tmp_path, cap, ignores_offset, ends_at, complete):
    with EmbeddedPacs(generate(BIG_SERIES)) as pacs:
        pacs.qido_page_cap, pacs.qido_ignores_offset, pacs.qido_pages_end_at = cap, ignores_offset, ends_at
        async with filesystem_over(pacs, tmp_path) as fs:
            shown = shown_instances(await all_files(fs))
            assert fs.stats()["listings_truncated"] == (0 if complete else 1)
            assert (shown == set(pacs.instances)) == complete


async def test_a_listing_cut_by_its_limit_says_so(pacs, tmp_path, caplog):
    async with filesystem_over(pacs, tmp_path, root_listing_limit=2) as fs:
        with caplog.at_level(logging.WARNING):
            studies = await listdir(fs, (await walk(fs, "/studies")).inode)
        assert len(studies) == 2
        assert fs.stats()["listings_truncated"] == 1
        assert "incomplete" in caplog.text and "limit of 2" in caplog.text
        assert "DOE" not in caplog.text and "TROLLEY-00" not in caplog.text
        fs.trolley.forget_searches()
        await listdir(fs, (await walk(fs, "/studies")).inode)  # searched again, cut again: counted once
        assert fs.stats()["listings_truncated"] == 1
        await listdir(fs, (await walk(fs, "/query/PatientID=TROLLEY-001&limit=5")).inode)
        assert fs.stats()["listings_truncated"] == 1  # 2 studies, within its limit: whole


@pytest.mark.parametrize("searcher", ["qido-rs", "mint"])
async def test_a_server_refusing_return_fields_still_lists(pacs, tmp_path, searcher, caplog):
    kind, options = searcher_options(pacs, searcher)
    pacs.refuse_return_fields = True
    async with filesystem_over(pacs, tmp_path, **options) as fs:
        files = await all_files(fs)
        assert shown_instances(files) == set(pacs.instances)
        node = next(iter(files.values()))
        assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
    assert "asking without them" in caplog.text


@pytest.mark.parametrize("searcher", ["qido-rs", "mint"])
async def test_a_400_for_another_reason_does_not_stop_asking_for_fields(pacs, tmp_path, searcher):
    kind, options = searcher_options(pacs, searcher)
    field_key = "includefield" if kind == "qido" else "IncludeFields"
    async with filesystem_over(pacs, tmp_path, retries=0, **options) as fs:
        pacs.faults.add(kind, "status", status=400, count=2)
        with pytest.raises(PacsError):
            await listdir(fs, (await walk(fs, "/query/PatientID=TROLLEY-001")).inode)
        pacs.requests.clear()
        await listdir(fs, (await walk(fs, "/query/PatientID=TROLLEY-002")).inode)
        assert any(key == field_key for _, params in pacs.requests for key, _ in params)


async def test_mint_asks_only_the_include_fields_its_level_accepts(pacs, tmp_path):
    """The embedded MINT refuses any field not on its level's list, as Vitrea does: listing the
    whole tree (instance level asks Rows, BitsAllocated...) works without a fallback."""
    _, options = searcher_options(pacs, "mint")
    async with filesystem_over(pacs, tmp_path, **options) as fs:
        files = await all_files(fs)
        assert shown_instances(files) == set(pacs.instances)
        assert all(node.size > 64 * 64 * 2 for node in files.values())  # sized from Rows x Columns


async def test_a_sidecar_is_rendered_once_per_listing_not_at_every_stat(pacs, tmp_path, monkeypatch):
    """series.json of a large series takes a while to render: stat (ls -l, find -ls, a file
    manager) must not pay it every time, only when the listing changes."""
    from trolleyfs.fs.dicom import SeriesDir

    renders = []
    original = SeriesDir.render_sidecar
    monkeypatch.setattr(SeriesDir, "render_sidecar", lambda self: renders.append(1) or original(self))
    async with filesystem_over(pacs, tmp_path) as fs:
        some = next(iter(pacs.instances.values()))
        study = await walk(fs, f"/studies/{some.value('StudyInstanceUID')}")
        series = next(node for node in (await listdir(fs, study.inode)).values() if node.is_dir)
        sidecar = (await listdir(fs, series.inode))["series.json"]
        sizes = {fs.getattr(sidecar.inode).size for _ in range(5)}
        await listdir(fs, series.inode)
        assert len(sizes) == 1 and len(renders) == 1
        assert len(await read_all(fs, sidecar.inode)) == sizes.pop()
