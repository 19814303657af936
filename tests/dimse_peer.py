"""A small DIMSE peer for fault tests: pynetdicom SCP serving C-FIND, C-GET and C-MOVE from sample
files, with behaviours that Orthanc cannot be made to show on demand (reject, fail, hang, abort,
overlapping C-MOVEs answered out of order)."""

from __future__ import annotations

import io
import threading
import time

import pydicom
import trio
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from trolleyfs.testing.orthanc import free_port


_UIDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
_MINIMAL_ANSWERS = {"SERIES": {"Modality", "SeriesNumber", *_UIDS}, "IMAGE": {"InstanceNumber", *_UIDS}}


class FakeDimsePeer:
    ae_title = "FAKE"

    def __init__(self, files: list[bytes]) -> None:
        self.datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
        self.port = free_port()
        self.mode = "normal"
        """normal | reject | fail | hang | abort-after-N (C-GET sends N instances, then aborts) |
        crossed-moves (the first C-MOVE sends its instances only after the second has sent all of its) |
        pending-ff01 (C-FIND answers carry status 0xFF01: optional keys not supported) |
        strict-hierarchy (as dcmqrscp: 0xC001 for a SERIES search without StudyInstanceUID or an
        IMAGE search without SeriesInstanceUID) | refuse-return-keys (0xC000 to any C-FIND asking
        back more than the unique keys) | minimal-answers (as dcmqrscp: SERIES answers hold only
        Modality, SeriesNumber and the UIDs, IMAGE answers only InstanceNumber and the UIDs)"""
        self.finds = 0
        self.releases = 0
        """Associations the other side released (A-RELEASE)."""
        self.aborts = 0
        self.association_released = threading.Event()
        self.move_destination: tuple[str, int] = ("127.0.0.1", 0)
        """Where every C-MOVE sends its instances, whatever the destination AE."""
        self.move_arrived = threading.Semaphore(0)
        """Released once per C-MOVE request received."""
        self._moves = 0
        self._second_move_done = threading.Event()
        self.gets = 0
        self.associations = 0
        self.aborted: trio.Event | None = None
        self._server = None
        self.released = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"dicom://{self.ae_title}@127.0.0.1:{self.port}"

    def __enter__(self) -> FakeDimsePeer:
        try:
            self.aborted = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
        except RuntimeError:  # not inside trio: nobody will wait for the event
            self._token = None
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        for storage in (CTImageStorage, MRImageStorage):
            ae.add_supported_context(storage, scu_role=True, scp_role=True)
            ae.add_requested_context(storage)  # for C-MOVE's sub-operations
        if self.mode == "reject":
            ae.require_calling_aet = ["SOMEONE-ELSE"]
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_FIND, self._find),
                (evt.EVT_C_GET, self._get),
                (evt.EVT_C_MOVE, self._move),
                (evt.EVT_ACCEPTED, self._accepted),
                (evt.EVT_ABORTED, self._on_abort),
                (evt.EVT_RELEASED, self._on_release),
            ],
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.released.set()
        for association in self._server.active_associations:  # go down like a stopped PACS
            association.abort()
        self._server.shutdown()

    def _matching(self, identifier: Dataset) -> list[Dataset]:
        keys = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")  # exact matches only
        return [
            ds for ds in self.datasets
            if all(not identifier.get(key) or ds.get(key) == identifier.get(key) for key in keys)
        ]

    def _on_release(self, event) -> None:
        self.releases += 1
        self.association_released.set()

    def _on_abort(self, event) -> None:
        self.aborts += 1
        if self._token is not None:
            trio.from_thread.run_sync(self.aborted.set, trio_token=self._token)

    def _accepted(self, event) -> None:
        self.associations += 1

    def _find(self, event):
        self.finds += 1
        identifier = event.identifier
        parent_key = {"SERIES": "StudyInstanceUID", "IMAGE": "SeriesInstanceUID"}.get(identifier.QueryRetrieveLevel)
        if self.mode == "strict-hierarchy" and parent_key and not identifier.get(parent_key):
            yield 0xC001, None
            return
        if self.mode == "fail":
            yield 0xA700, None
            return
        unique = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "QueryRetrieveLevel"}
        if self.mode == "refuse-return-keys" and any(e.keyword not in unique and not e.value for e in identifier):
            yield 0xC000, None
            return
        if self.mode == "hang":
            deadline = time.monotonic() + 60
            while not self.released.wait(0.05) and time.monotonic() < deadline:
                if event.assoc.dul.state_machine.current_state == "Sta1":  # the peer aborted
                    self._on_abort(event)
                    return
        allowed = _MINIMAL_ANSWERS.get(identifier.QueryRetrieveLevel) if self.mode == "minimal-answers" else None
        for ds in self._matching(event.identifier):
            answer = Dataset()
            for element in event.identifier:
                if element.keyword in ds and (allowed is None or element.keyword in allowed):
                    setattr(answer, element.keyword, ds.get(element.keyword))
            answer.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
            if "SpecificCharacterSet" in ds:  # it answers in the character set it stores, whatever was asked
                answer.SpecificCharacterSet = ds.SpecificCharacterSet
            yield 0xFF01 if self.mode == "pending-ff01" else 0xFF00, answer

    def _get(self, event):
        self.gets += 1
        matching = self._matching(event.identifier)
        if self.mode == "fail":
            yield 0
            yield 0xC000, None
            return
        yield len(matching)
        for index, ds in enumerate(matching):
            if self.mode.startswith("abort-after-") and index == int(self.mode.rsplit("-", 1)[1]):
                time.sleep(0.05)  # let the sub-operations before it finish
                event.assoc.abort()
                return
            yield 0xFF00, ds

    def _move(self, event):
        with self._lock:
            self._moves += 1
            order = self._moves
        self.move_arrived.release()
        yield self.move_destination
        matching = self._matching(event.identifier)
        yield len(matching)
        if self.mode == "crossed-moves" and order == 1:
            self._second_move_done.wait(30)
        for ds in matching:
            yield 0xFF00, ds
        if order == 2:
            self._second_move_done.set()
