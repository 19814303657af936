"""RAD-69 downloader: IHE Retrieve Imaging Document Set (RAD TF-2 §4.69), SOAP 1.2 over HTTP.

A request names a study, its series and, in each, the instances wanted as XDS documents
(RepositoryUniqueId + DocumentUniqueId = SOPInstanceUID), with the transfer syntaxes we accept.
The answer is MTOM/XOP: a ``multipart/related`` body whose root part is the SOAP envelope, listing
each document with an ``<xop:Include href="cid:...">`` that names the part holding its bytes.
Parts are matched to documents by that Content-ID, never by position, and streamed to the sink
as they arrive (split in the worker thread that reads the body). Documents the repository could not return are reported in a ``RegistryErrorList``
(for instance ``XDSMissingDocument``) and become a PacsError naming them.

Instances are asked for a series at a time, at most ``batch_size`` per request; a study, or a
series whose instances are not known, raises NeedsInstances so that the trolley finds them.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote
from xml.etree import ElementTree
from xml.etree.ElementTree import Element

from trolleyfs.backends.base import InstanceSink, store_bytes
from trolleyfs.backends.dimse_retrieve import COMMON
from trolleyfs.backends.http import Answer, BodyConsumer, HttpSession, checked_uid, loggable
from trolleyfs.backends.multipart import (
    MultipartSplitter, PartConsumer, WholeBody, boundary_of, content_length, media_type,
)
from trolleyfs.backends.safe_xml import parse_xml
from trolleyfs.errors import NeedsInstances, PacsError, PacsProtocolError, UnrequestedInstance
from trolleyfs.model import InstanceReference, Reference, SeriesReference

ACTION = "urn:ihe:rad:2009:RetrieveImagingDocumentSet"
SOAP = "http://www.w3.org/2003/05/soap-envelope"
ADDRESSING = "http://www.w3.org/2005/08/addressing"
IHE_RAD = "urn:ihe:rad:xdsi-b:2009"
XDS = "urn:ihe:iti:xds-b:2007"
REGREP = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
XOP = "http://www.w3.org/2004/08/xop/include"
_MAX_ENVELOPE_BYTES = 16 * 1024**2
_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
for _prefix, _namespace in (("s", SOAP), ("a", ADDRESSING), ("iherad", IHE_RAD), ("ihe", XDS)):
    ElementTree.register_namespace(_prefix, _namespace)  # the prefixes IHE's examples use


@dataclass
class Envelope:
    """What a response's SOAP envelope says."""

    documents: dict[str, str] = field(default_factory=dict)
    """SOPInstanceUID of each attachment, by Content-ID."""
    inline: dict[str, bytes] = field(default_factory=dict)
    """Documents sent base64-encoded in the envelope itself, by SOPInstanceUID."""
    errors: list[str] = field(default_factory=list)
    """``errorCode (location): codeContext`` of each RegistryError, and any SOAP fault."""


class Rad69:
    def __init__(self, session: HttpSession, url: str, repository_id: str, batch_size: int = 1000) -> None:
        self.session = session
        self.url = url
        self.repository_id = repository_id
        self.batch_size = batch_size

    async def fetch(self, reference: Reference, sink: InstanceSink) -> None:
        if isinstance(reference, InstanceReference):
            batches: Iterator[list[str]] = iter([[reference.instance_uid]])
        elif isinstance(reference, SeriesReference) and reference.instance_uids:
            uids = list(reference.instance_uids)
            batches = (uids[i : i + self.batch_size] for i in range(0, len(uids), self.batch_size))
        else:
            raise NeedsInstances(f"RAD-69 retrieves named instances, not a whole {type(reference).__name__}")
        for batch in batches:
            await self._retrieve(reference.study_uid, reference.series_uid, batch, sink)

    async def _retrieve(self, study_uid: str, series_uid: str, uids: list[str], sink: InstanceSink) -> None:
        body = request_envelope(
            self.url, self.repository_id, checked_uid(study_uid), checked_uid(series_uid), [checked_uid(u) for u in uids]
        )
        headers = {
            "Content-Type": f'application/soap+xml; charset=utf-8; action="{ACTION}"',
            "Accept": "multipart/related, application/soap+xml",
            "Accept-Encoding": "identity",
        }
        where = f"RAD-69 {loggable(self.url)}"
        asked = {uid: InstanceReference(study_uid=study_uid, series_uid=series_uid, instance_uid=uid) for uid in uids}
        answer = _Answer(sink, asked, where)
        await self.session.receive(self.url, answer.open_body, headers, method="POST", content=body)
        envelope = answer.envelope
        if envelope is None:
            raise PacsProtocolError(f"{where}: multipart answer without parts")
        for uid, data in envelope.inline.items():
            await store_bytes(sink, _asked(asked, uid, where), data)
            answer.received.add(uid)
        missing = [uid for uid in uids if uid not in answer.received]
        if missing:
            reasons = "; ".join(envelope.errors) or "no reason given"
            raise PacsError(f"{where}: {len(missing)} of {len(uids)} instances not returned ({reasons})")


def _asked(asked: dict[str, InstanceReference], uid: str, where: str) -> InstanceReference:
    if uid not in asked:
        raise UnrequestedInstance(f"{where}: the answer holds a document that was not asked for")
    return asked[uid]


class _Answer:
    """One RAD-69 answer, read in the worker thread: an MTOM body (the envelope first, then each
    attachment into the sink by Content-ID) or a bare SOAP envelope."""

    def __init__(self, sink: InstanceSink, asked: dict[str, InstanceReference], where: str) -> None:
        self._sink = sink
        self._asked = asked
        self._where = where
        self.envelope: Envelope | None = None
        self.received: set[str] = set()

    def open_body(self, answer: Answer) -> BodyConsumer:
        content_type = answer.header("content-type")
        if content_type.lower().startswith("multipart/"):  # media types are case-insensitive
            return MultipartSplitter(boundary_of(content_type), self)
        return WholeBody(_EnvelopePart(self))

    def begin(self, headers: dict[str, str]) -> PartConsumer:
        where = self._where
        if self.envelope is None:
            if not media_type(headers).startswith(("application/xop+xml", "application/soap+xml")):
                raise PacsProtocolError(f"{where}: first part is {media_type(headers)!r}, not the SOAP envelope")
            return _EnvelopePart(self)
        content_id = headers.get("content-id", "").strip().strip("<>")
        uid = self.envelope.documents.get(content_id)
        if uid is None:
            raise PacsProtocolError(f"{where}: a part with Content-ID {content_id!r} that no document refers to")
        if uid in self.received:
            raise PacsProtocolError(f"{where}: instance {uid} sent twice")
        self.received.add(uid)
        return self._sink.open_part(_asked(self._asked, uid, where), content_length(headers))


class _EnvelopePart:
    """The SOAP envelope, kept in memory (bounded) and parsed when complete."""

    def __init__(self, answer: _Answer) -> None:
        self._answer = answer
        self._data = bytearray()

    def write(self, data: memoryview) -> None:
        self._data += data
        if len(self._data) > _MAX_ENVELOPE_BYTES:
            raise PacsProtocolError(f"{self._answer._where}: SOAP envelope larger than {_MAX_ENVELOPE_BYTES} bytes")

    def end(self) -> None:
        self._answer.envelope = parse_envelope(bytes(self._data), self._answer._where)

    def abort(self) -> None:
        self._data.clear()


def request_envelope(url: str, repository_id: str, study_uid: str, series_uid: str, uids: list[str]) -> bytes:
    """The SOAP 1.2 RetrieveImagingDocumentSetRequest for some instances of one series."""
    must = {f"{{{SOAP}}}mustUnderstand": "1"}
    envelope = Element(f"{{{SOAP}}}Envelope")
    header = ElementTree.SubElement(envelope, f"{{{SOAP}}}Header")
    ElementTree.SubElement(header, f"{{{ADDRESSING}}}Action", must).text = ACTION
    ElementTree.SubElement(header, f"{{{ADDRESSING}}}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    reply_to = ElementTree.SubElement(header, f"{{{ADDRESSING}}}ReplyTo", must)
    ElementTree.SubElement(reply_to, f"{{{ADDRESSING}}}Address").text = _ANONYMOUS
    ElementTree.SubElement(header, f"{{{ADDRESSING}}}To", must).text = url
    body = ElementTree.SubElement(envelope, f"{{{SOAP}}}Body")
    request = ElementTree.SubElement(body, f"{{{IHE_RAD}}}RetrieveImagingDocumentSetRequest")
    study = ElementTree.SubElement(request, f"{{{IHE_RAD}}}StudyRequest", studyInstanceUID=study_uid)
    series = ElementTree.SubElement(study, f"{{{IHE_RAD}}}SeriesRequest", seriesInstanceUID=series_uid)
    for uid in uids:
        document = ElementTree.SubElement(series, f"{{{XDS}}}DocumentRequest")
        ElementTree.SubElement(document, f"{{{XDS}}}RepositoryUniqueId").text = repository_id
        ElementTree.SubElement(document, f"{{{XDS}}}DocumentUniqueId").text = uid
    syntaxes = ElementTree.SubElement(request, f"{{{IHE_RAD}}}TransferSyntaxUIDList")
    for syntax in COMMON:  # what the repository may send unchanged; nothing asks it to transcode
        ElementTree.SubElement(syntaxes, f"{{{IHE_RAD}}}TransferSyntaxUID").text = str(syntax)
    return ElementTree.tostring(envelope, encoding="utf-8", xml_declaration=True)


def parse_envelope(body: bytes, where: str = "RAD-69") -> Envelope:
    """The documents, inline documents and errors of a RetrieveDocumentSetResponse envelope."""
    root = parse_xml(body, where)
    if root.tag != f"{{{SOAP}}}Envelope":
        raise PacsProtocolError(f"{where}: expected a SOAP 1.2 Envelope, got <{root.tag}>")
    envelope = Envelope()
    for fault in root.iter(f"{{{SOAP}}}Fault"):
        reason = " ".join(text.strip() for text in fault.itertext() if text.strip())
        envelope.errors.append(f"SOAP fault: {reason}")
    for error in root.iter(f"{{{REGREP}}}RegistryError"):
        envelope.errors.append(
            f"{error.get('errorCode', '?')} ({error.get('location', '')}): {error.get('codeContext', '')}".strip()
        )
    for document in root.iter(f"{{{XDS}}}DocumentResponse"):
        uid = (document.findtext(f"{{{XDS}}}DocumentUniqueId") or "").strip()
        content = document.find(f"{{{XDS}}}Document")
        if not uid or content is None:
            raise PacsProtocolError(f"{where}: DocumentResponse without DocumentUniqueId or Document")
        include = content.find(f"{{{XOP}}}Include")
        if include is not None:
            href = include.get("href", "")
            if not href.startswith("cid:"):
                raise PacsProtocolError(f"{where}: xop:Include href {href!r} is not a cid: URL")
            envelope.documents[unquote(href[4:])] = uid
        else:
            try:
                envelope.inline[uid] = base64.b64decode("".join(content.itertext()), validate=False)
            except ValueError as exc:
                raise PacsProtocolError(f"{where}: document {uid} is neither an xop:Include nor base64") from exc
    return envelope
