"""A hypothesis state machine: random PACS changes, listings, lookups and reads against the
filesystem core, compared with a reference model (a set of instances). Listing TTL 0, so the
core must show exactly what the PACS holds at every step, through every view."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.unit.test_hostile_input import StaticSearcher, walk_all, walk_below
from trolleyfs.cache import InstanceCache
from trolleyfs.errors import NotFound
from trolleyfs.fs.core import FileSystem
from trolleyfs.fs.settings import FsSettings
from trolleyfs.fs.names import patient_dir_name
from trolleyfs.fs.nodes import ROOT_INODE
from trolleyfs.model import InstanceReference
from trolleyfs.trolley import Trolley

PATIENTS = ["P1", "P/2", "ümlaut"]


def part10(reference: InstanceReference) -> bytes:
    uid = reference.instance_uid
    dataset = Dataset()
    dataset.StudyInstanceUID = reference.study_uid
    dataset.SeriesInstanceUID = reference.series_uid
    dataset.SOPInstanceUID = uid
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPInstanceUID = uid
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class ModelDownloader:
    def __init__(self, machine: CoreAgainstModel) -> None:
        self.machine = machine
        self.fetches = 0

    async def fetch(self, reference: InstanceReference, sink) -> None:  # noqa: ANN001
        self.fetches += 1
        if reference.instance_uid not in self.machine.content:
            raise NotFound(reference.instance_uid)
        async with sink.receive(reference) as writer:
            await writer.write(part10(reference))


class CoreAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.content: dict[str, dict] = {}  # SOPInstanceUID -> record: the reference model
        self.searcher = StaticSearcher([])
        self.downloader = ModelDownloader(self)
        self.directory = tempfile.TemporaryDirectory()
        # One clock for every step's trio.run, so that cached answers age consistently between steps.
        self.clock = trio.testing.MockClock()
        cache = self.run(InstanceCache.open, Path(self.directory.name), 10**9)
        self.fs = FileSystem(Trolley(self.searcher, self.downloader, cache, listing_ttl=0), FsSettings(listing_ttl=0))

    def run(self, function, *args):  # noqa: ANN001, ANN201
        return trio.run(function, *args, clock=self.clock)

    def teardown(self) -> None:
        self.directory.cleanup()

    @rule(patient=st.sampled_from(PATIENTS), study=st.integers(0, 2), series=st.integers(0, 1),
          number=st.integers(0, 3))
    def pacs_adds(self, patient: str, study: int, series: int, number: int) -> None:
        study_uid = f"1.{PATIENTS.index(patient)}.{study}"
        uid = f"{study_uid}.{series}.{number}"
        self.content[uid] = {"PatientID": patient, "StudyInstanceUID": study_uid, "StudyDate": f"2024010{study + 1}",
                             "AccessionNumber": f"A{study}",
                             "SeriesInstanceUID": f"{study_uid}.{series}", "Modality": "OT",
                             "SOPInstanceUID": uid, "InstanceNumber": str(number)}
        self.searcher.records = list(self.content.values())

    @precondition(lambda self: self.content)
    @rule(data=st.data())
    def pacs_removes(self, data: st.DataObject) -> None:
        del self.content[data.draw(st.sampled_from(sorted(self.content)))]
        self.searcher.records = list(self.content.values())

    @precondition(lambda self: self.content)
    @rule(data=st.data())
    def read_an_instance(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.content)))
        record = self.content[uid]

        async def read() -> bytes:
            node = await self.fs.lookup(ROOT_INODE, "patients")
            node = await self.fs.lookup(node.inode, patient_dir_name(record["PatientID"]))
            for parent_uid in (record["StudyInstanceUID"], record["SeriesInstanceUID"], uid):
                node = await self._child_ending(node.inode, parent_uid)
            handle, _ = await self.fs.open(node.inode, writable=False)
            try:
                return await self.fs.read(handle, 0, 1 << 20)
            finally:
                self.fs.release(handle)

        expected = InstanceReference(
            study_uid=record["StudyInstanceUID"], series_uid=record["SeriesInstanceUID"], instance_uid=uid
        )
        assert self.run(read) == part10(expected)

    async def _child_ending(self, inode: int, uid: str):  # noqa: ANN202
        handle = await self.fs.opendir(inode)
        entries = self.fs.readdir(handle, 0)
        self.fs.releasedir(handle)
        (node,) = [node for name, node, _ in entries if name.removesuffix(".dcm").endswith(f"_{uid}")]
        return node

    @rule(patient=st.sampled_from(PATIENTS))
    def look_up_a_patient(self, patient: str) -> None:
        async def lookup() -> bool:
            patients = await self.fs.lookup(ROOT_INODE, "patients")
            try:
                await self.fs.lookup(patients.inode, patient_dir_name(patient))
            except NotFound:
                return False
            return True

        assert self.run(lookup) == any(r["PatientID"] == patient for r in self.content.values())

    @invariant()
    def the_tree_is_the_pacs(self) -> None:
        files = [path for path in self.run(walk_all, self.fs) if path[-1].endswith(".dcm")]
        shown = {(path[1], path[-1].removesuffix(".dcm").rsplit("_", 1)[1]) for path in files}
        expected = {(patient_dir_name(r["PatientID"]), uid) for uid, r in self.content.items()}
        assert shown == expected

    @rule(view=st.sampled_from(["studies", "accession", "dates", "query"]), study=st.integers(0, 2),
          patient=st.sampled_from(PATIENTS))
    def a_view_shows_the_studies_it_names(self, view: str, study: int, patient: str) -> None:
        """Each view's folder holds exactly the instances of the studies the model says it should."""
        study_uid = f"1.{PATIENTS.index(patient)}.{study}"
        folder, wanted = {
            "studies": (("studies", study_uid), lambda r: r["StudyInstanceUID"] == study_uid),
            "accession": (("accession", f"A{study}"), lambda r: r["AccessionNumber"] == f"A{study}"),
            "dates": (("dates", "2024", "01", f"0{study + 1}"), lambda r: r["StudyDate"] == f"2024010{study + 1}"),
            "query": (("query", f"AccessionNumber=A{study}&StudyDate=-2024010{study + 1}"),
                      lambda r: r["AccessionNumber"] == f"A{study}"),
        }[view]
        expected = {uid for uid, record in self.content.items() if wanted(record)}

        async def shown() -> set[str] | None:
            node = await self.fs.lookup(ROOT_INODE, folder[0])
            try:
                for name in folder[1:]:
                    node = await self.fs.lookup(node.inode, name)
            except NotFound:
                return None
            return {path[-1].removesuffix(".dcm").rsplit("_", 1)[1] for path in await walk_below(self.fs, node.inode)
                    if path[-1].endswith(".dcm")}

        found = self.run(shown)
        if view in ("studies", "accession") and not expected:
            assert found is None  # looked up directly: no such study, no folder
        else:
            assert found == expected


CoreAgainstModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None, derandomize=True)
test_core_against_model = CoreAgainstModel.TestCase
