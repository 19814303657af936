"""Hostile answers from a PACS: names that try to escape, collide or overflow, and UIDs that are
not UIDs. None may escape the cache directory, crash the core, or give two entries one name."""

from __future__ import annotations

import errno
import fnmatch
import io
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom import config as pydicom_config

from trolleyfs.backends.http import HttpSession
from trolleyfs.backends.qido_rs import QidoRS
from trolleyfs.backends.rad69 import Rad69
from trolleyfs.backends.wado_rs import WadoRS
from trolleyfs.backends.wado_uri import WadoURI
from trolleyfs.cache import InstanceCache
from trolleyfs.errors import PacsProtocolError, TrolleyError
from trolleyfs.fs.core import FileSystem
from trolleyfs.fs.nodes import ROOT_INODE
from trolleyfs.model import InstanceReference, Query, QueryLevel, Study, build_studies
from trolleyfs.testing.data import SampleSpec, generate
from trolleyfs.trolley import Trolley

HOSTILE_TEXT = ["A/B", "..", ".", "", "x\0y", "line\nbreak", "caf\udce9", "\\x", "*?", "Z" * 1000, "../../etc"]


class StaticSearcher:
    """A PACS that answers every query from a fixed list of flat records."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records
        self.queries = 0

    async def find_studies(self, query: Query) -> list[Study]:
        self.queries += 1
        keys = query.matching_keys()
        matching = [record for record in self.records if all(_matches(record, k, v) for k, v in keys.items())]
        studies = build_studies(matching, query.query_level)
        return studies[: query.limit] if query.limit else studies


def _matches(record: dict, keyword: str, wanted: str) -> bool:
    """DICOM matching as a strict PACS does it: date ranges, ``*``/``?`` wildcards, else exact."""
    actual = str(record.get(keyword, ""))
    if keyword.endswith("Date") and "-" in wanted:
        low, _, high = wanted.partition("-")
        return bool(actual) and (not low or actual >= low) and (not high or actual <= high)
    if "*" in wanted or "?" in wanted:
        return fnmatch.fnmatchcase(actual, wanted.replace("[", "[[]"))
    return actual == wanted


class NoDownloads:
    async def fetch(self, reference, sink):  # noqa: ANN001 - the Downloader protocol
        raise AssertionError("listing must not download")


async def filesystem(records: list[dict], tmp_path: Path) -> tuple[FileSystem, StaticSearcher]:
    searcher = StaticSearcher(records)
    cache = await InstanceCache.open(tmp_path / "cache", max_bytes=10**9)
    return FileSystem(Trolley(searcher, NoDownloads(), cache)), searcher


async def walk_all(fs: FileSystem) -> list[tuple[str, ...]]:
    patients = await fs.lookup(ROOT_INODE, "patients")
    return [("patients", *path) for path in await walk_below(fs, patients.inode)]


async def walk_below(fs: FileSystem, top: int) -> list[tuple[str, ...]]:
    """Every file below directory ``top`` by path, checking each name on the way."""
    paths: list[tuple[str, ...]] = []

    async def visit(inode: int, path: tuple[str, ...]) -> None:
        handle = await fs.opendir(inode)
        entries = fs.readdir(handle, 0)
        fs.releasedir(handle)
        names = [name for name, _, _ in entries]
        assert len(names) == len(set(names)), f"duplicate names in {path}"
        for name, node, _ in entries:
            assert name not in ("", ".", "..") and "/" not in name and "\0" not in name, (path, name)
            assert len(name.encode("utf-8", "surrogateescape")) <= 255, (path, name)
            assert (await fs.lookup(inode, name)).inode == node.inode
            if node.is_dir:
                await visit(node.inode, (*path, name))
            else:
                paths.append((*path, name))

    await visit(top, ())
    return paths


async def test_hostile_ids_descriptions_and_uids_give_safe_unique_names(tmp_path):
    records = []
    for p, text in enumerate(HOSTILE_TEXT):
        for s, study_uid in enumerate((f"1.{p}.1", text or "empty-uid", text)):  # duplicate and bogus UIDs
            records.append({
                "PatientID": text, "PatientName": text, "StudyInstanceUID": study_uid, "StudyDate": text,
                "StudyDescription": text, "SeriesInstanceUID": text or "s", "SeriesDescription": text,
                "Modality": text, "SeriesNumber": text, "SOPInstanceUID": f"{text}.{s}", "InstanceNumber": text,
            })
    fs, _ = await filesystem(records, tmp_path)
    files = [path for path in await walk_all(fs) if path[-1].endswith(".dcm")]
    assert files  # every hostile patient is reachable and listed


async def test_ten_thousand_entries_in_one_directory_list_with_one_query(tmp_path):
    records = [
        {"PatientID": "P", "StudyInstanceUID": "1", "SeriesInstanceUID": "1.1", "SOPInstanceUID": f"1.1.{i}",
         "InstanceNumber": str(i % 50)}  # many equal instance numbers
        for i in range(10_000)
    ]
    fs, searcher = await filesystem(records, tmp_path)
    started = time.monotonic()
    files = [path for path in await walk_all(fs) if path[-1].endswith(".dcm")]
    assert len(files) == 10_000
    assert searcher.queries == 4  # /patients, the patient, the study, the series
    assert time.monotonic() - started < 60


async def test_a_uid_that_is_a_path_never_leaves_the_cache_directory(tmp_path):
    template = next(generate(SampleSpec(patients=(("P", "N"),), studies_per_patient=1, series_per_study=1,
                                         instances_per_series=1)))
    dataset = pydicom.dcmread(io.BytesIO(template))
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "../../../../etc/passwd"
    buffer = io.BytesIO()
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        dataset.save_as(buffer, enforce_file_format=True)
    finally:
        pydicom_config.settings.writing_validation_mode = previous
    cache = await InstanceCache.open(tmp_path / "cache", max_bytes=10**9)
    async with cache.receive() as writer:
        await writer.write(buffer.getvalue())
    entry = cache.get("../../../../etc/passwd")
    assert entry is not None
    assert entry.path.resolve().is_relative_to((tmp_path / "cache").resolve())
    assert not any(path.name == "passwd" for path in tmp_path.rglob("*"))


@pytest.mark.parametrize("level", list(QueryLevel))
def test_records_without_uids_are_ignored_not_fatal(level):
    assert build_studies([{"PatientID": "X"}, {"StudyInstanceUID": ""}], level) == []


HOSTILE_UIDS = ["1.2/../../patients", "1.2?requestType=x", "1.2#frag", "..", "1.2.3 ", "1.2.%2F", "1." + "1" * 70]


def _recording_session(requested: list[str]) -> HttpSession:
    def answer(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(404)

    return HttpSession(timeout=5, retries=0, max_connections=1, transport=httpx.MockTransport(answer))


@pytest.mark.parametrize("hostile", HOSTILE_UIDS)
@pytest.mark.parametrize("downloader", ["wado-rs", "wado-uri", "rad69"])
async def test_a_value_that_is_not_a_uid_never_reaches_a_request(downloader, hostile):
    """Security: UIDs come from the PACS; one holding ``/``, ``?``, ``#`` or ``..`` must not steer
    the request somewhere else. It is refused (EIO) before anything is sent."""
    requested: list[str] = []
    session = _recording_session(requested)
    backend = {
        "wado-rs": lambda: WadoRS(session, "http://pacs.invalid/dicom-web"),
        "wado-uri": lambda: WadoURI(session, "http://pacs.invalid/wado"),
        "rad69": lambda: Rad69(session, "http://pacs.invalid/rad69", "1.3.6.1.4.1000"),
    }[downloader]()
    for reference in (
        InstanceReference(study_uid=hostile, series_uid="1.2", instance_uid="1.2.3"),
        InstanceReference(study_uid="1.2", series_uid=hostile, instance_uid="1.2.3"),
        InstanceReference(study_uid="1.2", series_uid="1.2.4", instance_uid=hostile),
    ):
        with pytest.raises(PacsProtocolError) as raised:
            await backend.fetch(reference, sink=None)
        assert raised.value.errno == errno.EIO
    await session.aclose()
    assert requested == []


@pytest.mark.parametrize("hostile", HOSTILE_UIDS)
async def test_qido_puts_a_value_that_is_not_a_uid_in_the_query_string_not_the_path(hostile):
    requested: list[str] = []
    session = _recording_session(requested)
    query = Query(StudyInstanceUID=hostile, SeriesInstanceUID="1.2", query_level=QueryLevel.INSTANCE)
    with pytest.raises(TrolleyError):
        await QidoRS(session, "http://pacs.invalid/dicom-web").find_studies(query)
    await session.aclose()
    assert requested and all(httpx.URL(url).path == "/dicom-web/instances" for url in requested)
