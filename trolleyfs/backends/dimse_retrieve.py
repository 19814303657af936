"""DIMSE downloaders: C-GET and C-MOVE (Study Root), and the storage SCP C-MOVE sends to.

Both put each received instance into the sink as a Part-10 file made of the dataset bytes exactly
as the peer sent them (pynetdicom's ``encoded_dataset``: no decoding, no re-encoding). Received
instances are written to the cache on pynetdicom's own thread (the sink's ``open_part``), so a
slow disk slows the peer down instead of filling memory, and no instance waits for the event loop.

- :class:`CGet` asks for a study, series or instance in one association. The storage contexts
  it offers (with the SCP role) are, within the 128-context limit: the SOP classes the search
  found, then those its Modality implies when the search told no SOP class (a Q/R SCP such as
  dcmqrscp returns only InstanceNumber and SOPInstanceUID at IMAGE level), each with the common
  transfer syntaxes as separate contexts so the peer sends the bytes it stores; then a default
  set of storage classes with the uncompressed syntaxes. Deflated Explicit VR Little Endian is
  never proposed: a peer that honours it deflates every object on the fly, for nothing.
- :class:`CMove` asks the peer to send to ``move_aet``; :class:`StorageSCP` listens for the life
  of the mount and routes each arriving instance to the C-MOVE it belongs to by the Move
  Originator Message ID of its C-STORE (each C-MOVE in flight has its own message ID, so
  overlapping moves of one study are never mixed up), refusing instances nobody asked for. A PACS
  that leaves the ID out gets its instances routed to the oldest C-MOVE asking for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from trolleyfs.backends.base import InstanceSink
from trolleyfs.backends.dimse import DimsePeer, failure, status_category
from trolleyfs.errors import PacsError, TrolleyError
from trolleyfs.model import InstanceReference, Reference, SeriesReference

log = logging.getLogger(__name__)

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
COMMON = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
    JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]
"""The syntaxes PACSs store images in; each is offered as a context of its own for known classes."""
DEFAULT_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # mammography
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # breast tomosynthesis
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.130",  # enhanced PET
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.12.2",  # XRF
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT image
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.66.4",  # segmentation
    "1.2.840.10008.5.1.4.1.1.104.1",  # encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.88.11",  # basic text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # key object selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # grayscale softcopy presentation state
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL photographic
)
_CT, _MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
_SECONDARY_CAPTURE = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.4")
_SR = ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33")
MODALITY_CLASSES = {
    "CT": (_CT, f"{_CT}.1"),
    "MR": (_MR, f"{_MR}.1"),
    "CR": ("1.2.840.10008.5.1.4.1.1.1",),
    "DX": ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1"),
    "MG": ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.13.1.3"),
    "US": ("1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"),
    "NM": ("1.2.840.10008.5.1.4.1.1.20",),
    "PT": ("1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130"),
    "XA": ("1.2.840.10008.5.1.4.1.1.12.1",),
    "RF": ("1.2.840.10008.5.1.4.1.1.12.2",),
    "XC": ("1.2.840.10008.5.1.4.1.1.77.1.4",),
    "OT": _SECONDARY_CAPTURE,
    "SC": _SECONDARY_CAPTURE,
    "SR": _SR,
    "KO": ("1.2.840.10008.5.1.4.1.1.88.59",),
    "PR": ("1.2.840.10008.5.1.4.1.1.11.1",),
    "SEG": ("1.2.840.10008.5.1.4.1.1.66.4",),
    "DOC": ("1.2.840.10008.5.1.4.1.1.104.1",),
    "RTIMAGE": ("1.2.840.10008.5.1.4.1.1.481.1",),
    "RTDOSE": ("1.2.840.10008.5.1.4.1.1.481.2",),
    "RTSTRUCT": ("1.2.840.10008.5.1.4.1.1.481.3",),
    "RTPLAN": ("1.2.840.10008.5.1.4.1.1.481.5",),
}
"""The storage SOP classes a series of each Modality (PS3.3 C.7.3.1.1.1) usually holds."""
_MAX_CONTEXTS = 127  # 128 presentation contexts at most, one of them for the retrieve itself
_STATUS_SUCCESS = 0x0000
_STATUS_OUT_OF_RESOURCES = 0xA700
_STATUS_CANNOT_UNDERSTAND = 0xC000
_MAX_MESSAGE_ID = 0xFFFF


def retrieve_identifier(reference: Reference) -> Dataset:
    identifier = Dataset()
    identifier.StudyInstanceUID = reference.study_uid
    identifier.QueryRetrieveLevel = "STUDY"
    if isinstance(reference, (SeriesReference, InstanceReference)):
        identifier.SeriesInstanceUID = reference.series_uid
        identifier.QueryRetrieveLevel = "SERIES"
    if isinstance(reference, InstanceReference):
        identifier.SOPInstanceUID = reference.instance_uid
        identifier.QueryRetrieveLevel = "IMAGE"
    return identifier


def storage_contexts(sop_classes: tuple[str, ...], modalities: tuple[str, ...] = ()) -> list[PresentationContext]:
    """Contexts to receive instances on: the known classes (or, with none known, those the
    modalities imply) once per common syntax, then the default classes with the uncompressed
    syntaxes, at most 127 in all."""
    likely = sop_classes or tuple(uid for modality in modalities for uid in MODALITY_CLASSES.get(modality, ()))
    likely = tuple(dict.fromkeys(likely))
    contexts = [build_context(uid, syntax) for uid in likely for syntax in COMMON]
    contexts += [build_context(uid, UNCOMPRESSED) for uid in DEFAULT_STORAGE_CLASSES if uid not in likely]
    return contexts[:_MAX_CONTEXTS]


@dataclass
class _Receiver:
    """Hands instances arriving on pynetdicom threads to an async sink, remembering what failed."""

    sink: InstanceSink
    expected: Reference
    received: int = 0
    error: BaseException | None = None

    def store(self, event: Event) -> int:
        """On pynetdicom's thread: write the instance into the sink from this very thread (no
        round trip through the event loop per instance)."""
        part = None
        try:
            data = event.encoded_dataset(include_meta=True)
            part = self.sink.open_part(self.expected, len(data))
            part.write(memoryview(data))
            part.end()
        except BaseException as exc:
            if part is not None:
                part.abort()  # the peer gets a failure status; the error is raised later
            log.warning("storing a received instance failed: %s", exc)
            self.error = self.error or exc
            return _STATUS_OUT_OF_RESOURCES
        self.received += 1
        return _STATUS_SUCCESS

    def raise_if_failed(self, operation: str) -> None:
        if self.error is not None:
            if isinstance(self.error, TrolleyError):
                raise self.error
            raise PacsError(f"{operation}: storing failed: {self.error}") from self.error


def run_retrieve(
    association: Association, responses, operation: str, receiver: _Receiver
) -> None:
    """Read C-GET/C-MOVE responses to the end; raise on failure, on a lost association, or when
    sub-operations failed."""
    for status, _ in responses:
        code, category = status_category(status, operation)
        if category == "Pending":
            continue
        if category == "Success":
            break
        if category == "Warning":
            failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            raise PacsError(f"{operation}: {failed} sub-operations failed (status 0x{code:04X})")
        raise failure(status, operation, code)
    receiver.raise_if_failed(operation)


class CGet:
    def __init__(self, peer: DimsePeer) -> None:
        self.peer = peer

    async def fetch(self, reference: Reference, sink: InstanceSink) -> None:
        receiver = _Receiver(sink, reference)
        contexts = storage_contexts(reference.sop_class_uids, reference.modalities)
        roles = [build_role(uid, scp_role=True) for uid in dict.fromkeys(c.abstract_syntax for c in contexts)]
        operation = f"C-GET {_describe(reference)} from {self.peer}"
        await self.peer.run(
            [build_context(StudyRootQueryRetrieveInformationModelGet), *contexts],
            lambda association: run_retrieve(
                association,
                association.send_c_get(retrieve_identifier(reference), StudyRootQueryRetrieveInformationModelGet),
                operation,
                receiver,
            ),
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, receiver.store)],
        )
        if not receiver.received:
            raise PacsError(f"{operation}: nothing was received")


@dataclass
class _Route:
    reference: Reference
    receiver: _Receiver


class StorageSCP:
    """Our storage SCP for C-MOVE results, listening for the life of the mount."""

    def __init__(self, ae_title: str, host: str, port: int, peer: DimsePeer) -> None:
        self.ae_title = ae_title
        self.address = (host, port)
        self._peer = peer
        self._routes: dict[int, _Route] = {}
        """The C-MOVEs in flight, by their message ID."""
        self._last_id = 0
        self._lock = threading.Lock()
        self._server = None

    def start(self) -> None:
        ae = self._peer.application_entity()
        ae.ae_title = self.ae_title
        for context in AllStoragePresentationContexts:  # an SCP may accept more than 128 contexts
            ae.add_supported_context(context.abstract_syntax, COMMON + [ExplicitVRBigEndian])
        try:
            self._server = ae.start_server(
                self.address, block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
            )
        except OSError as exc:
            raise TrolleyError(f"cannot listen for C-MOVE on {self.address[0]}:{self.address[1]}: {exc}") from exc
        log.info("storage SCP %s listening on %s:%d", self.ae_title, *self.address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def expect(self, route: _Route) -> tuple[int, Callable[[], None]]:
        """Register a C-MOVE about to be sent: (the message ID to send it with, a callable to
        call when it has ended)."""
        with self._lock:
            for _ in range(_MAX_MESSAGE_ID):
                self._last_id = self._last_id % _MAX_MESSAGE_ID + 1
                if self._last_id not in self._routes:
                    break
            else:
                raise PacsError(f"{_MAX_MESSAGE_ID} C-MOVEs in flight at once")
            message_id = self._last_id
            self._routes[message_id] = route

        def done() -> None:
            with self._lock:
                del self._routes[message_id]

        return message_id, done

    def _on_store(self, event: Event) -> int:
        dataset = event.dataset
        uids = (
            str(dataset.get("StudyInstanceUID", "")),
            str(dataset.get("SeriesInstanceUID", "")),
            str(dataset.get("SOPInstanceUID", "")),
        )
        originator = event.request.MoveOriginatorMessageID
        with self._lock:
            if originator is not None:
                route = self._routes.get(int(originator))
            else:
                route = next((r for r in self._routes.values() if r.reference.admits(*uids)), None)
        if route is None or not route.reference.admits(*uids):
            log.warning("refusing an instance nobody asked for: %s from %s", uids[2], event.assoc.requestor.ae_title)
            return _STATUS_CANNOT_UNDERSTAND
        return route.receiver.store(event)


class CMove:
    def __init__(self, peer: DimsePeer, scp: StorageSCP) -> None:
        self.peer = peer
        self.scp = scp

    async def fetch(self, reference: Reference, sink: InstanceSink) -> None:
        receiver = _Receiver(sink, reference)
        operation = f"C-MOVE {_describe(reference)} from {self.peer} to {self.scp.ae_title}"
        message_id, done = self.scp.expect(_Route(reference, receiver))
        try:
            await self.peer.run(
                [build_context(StudyRootQueryRetrieveInformationModelMove)],
                lambda association: run_retrieve(
                    association,
                    association.send_c_move(
                        retrieve_identifier(reference),
                        self.scp.ae_title,
                        StudyRootQueryRetrieveInformationModelMove,
                        msg_id=message_id,
                    ),
                    operation,
                    receiver,
                ),
            )
        finally:
            done()
        if not receiver.received:
            raise PacsError(f"{operation}: nothing was received")


def _describe(reference: Reference) -> str:
    if isinstance(reference, InstanceReference):
        return f"instance {reference.instance_uid}"
    if isinstance(reference, SeriesReference):
        return f"series {reference.series_uid}"
    return f"study {reference.study_uid}"
