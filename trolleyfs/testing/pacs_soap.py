"""The embedded PACS's MINT and RAD-69 answers, built from its stored instances.

- MINT ``studySearchResults`` XML (namespace ``http://medical.nema.org/mint``): one ``study``
  element per study with ``attr tag= vr= val=`` children, nested ``series`` and ``instance``
  elements down to the asked ``QueryLevel``; an empty value is an ``attr`` without ``val``.
- RAD-69 answers as an IHE repository sends them: MTOM/XOP ``multipart/related`` with the SOAP 1.2
  envelope as root part and one ``application/dicom`` part per document, referenced by
  ``xop:Include href="cid:..."``; attachments go out in the reverse of the requested order, so
  that a client matching by position fails. Documents it does not hold are reported as
  ``XDSMissingDocument`` (``XDSUnknownRepositoryId`` when another repository id is asked for) in
  a ``RegistryErrorList`` (status PartialSuccess, or Failure with no
  attachments at all, then as plain ``application/soap+xml``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from xml.etree import ElementTree
from xml.etree.ElementTree import Element, SubElement

from pydicom.datadict import dictionary_VR, tag_for_keyword

from trolleyfs.backends.mint import NAMESPACE as MINT
from trolleyfs.backends.rad69 import ADDRESSING, IHE_RAD, REGREP, SOAP, XDS, XOP
from trolleyfs.backends.safe_xml import parse_xml

_SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
_PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
_FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
_ERROR_TEXTS = {
    "XDSMissingDocument": "No such SOP instance in this repository",
    "XDSUnknownRepositoryId": "This is not the repository asked for",
}
XML_BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (n, b"&lol%d;" % (n - 1) * 10 if n > 1 else b"&lol;" * 10) for n in range(1, 10))
    + b']><studySearchResults xmlns="http://medical.nema.org/mint">&lol9;</studySearchResults>'
)
"""Billion laughs: a few hundred bytes that expand to gigabytes in a parser that allows entities."""
XML_EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
    b'<studySearchResults xmlns="http://medical.nema.org/mint">&secret;</studySearchResults>'
)
"""An external entity: a parser that resolves it reads a local file into the answer."""

for _prefix, _namespace in (("env", SOAP), ("rs", REGREP), ("xop", XOP)):
    ElementTree.register_namespace(_prefix, _namespace)

def mint_search_results(studies: list[tuple[dict[str, str], list[tuple[dict[str, str], list[dict[str, str]]]]]]) -> bytes:
    """``[(study attributes, [(series attributes, [instance attributes, ...]), ...]), ...]`` as
    MINT XML, in the default namespace as MINT servers write it; attributes are keyword -> text
    (multiple values backslash-separated)."""
    root = Element("studySearchResults", xmlns=MINT)  # plain names under a default xmlns
    for study_attributes, series_list in studies:
        study = SubElement(root, "study", studyUUID=str(uuid.uuid4()), lastModified="2024-01-15T00:00:00Z")
        _attrs(study, study_attributes)
        for series_attributes, instances in series_list:
            series = SubElement(study, "series")
            _attrs(series, series_attributes)
            for instance_attributes in instances:
                _attrs(SubElement(series, "instance"), instance_attributes)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _attrs(element: Element, attributes: dict[str, str]) -> None:
    for keyword, value in attributes.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        attr = SubElement(element, "attr", tag=f"{tag:08x}", vr=dictionary_VR(tag))
        if value:
            attr.set("val", value)


@dataclass
class Rad69Request:
    study_uid: str
    series_uid: str
    repository_ids: set[str]
    document_uids: list[str]


def parse_rad69_request(body: bytes) -> Rad69Request:
    root = parse_xml(body, "RAD-69 request")
    study = root.find(f".//{{{IHE_RAD}}}StudyRequest")
    series = root.find(f".//{{{IHE_RAD}}}SeriesRequest")
    if study is None or series is None:
        raise ValueError("no StudyRequest/SeriesRequest")
    documents = root.findall(f".//{{{XDS}}}DocumentRequest")
    return Rad69Request(
        study_uid=study.get("studyInstanceUID", ""),
        series_uid=series.get("seriesInstanceUID", ""),
        repository_ids={(d.findtext(f"{{{XDS}}}RepositoryUniqueId") or "").strip() for d in documents},
        document_uids=[(d.findtext(f"{{{XDS}}}DocumentUniqueId") or "").strip() for d in documents],
    )


def rad69_envelope(repository_id: str, found: dict[str, str], missing: dict[str, str]) -> bytes:
    """The RetrieveDocumentSetResponse envelope: ``found`` maps SOPInstanceUID -> Content-ID,
    ``missing`` SOPInstanceUID -> XDS error code."""
    envelope = Element(f"{{{SOAP}}}Envelope")
    header = SubElement(envelope, f"{{{SOAP}}}Header")
    SubElement(header, f"{{{ADDRESSING}}}Action").text = "urn:ihe:iti:2007:RetrieveDocumentSetResponse"
    response = SubElement(SubElement(envelope, f"{{{SOAP}}}Body"), f"{{{XDS}}}RetrieveDocumentSetResponse")
    status = _SUCCESS if not missing else (_PARTIAL if found else _FAILURE)
    registry = SubElement(response, f"{{{REGREP}}}RegistryResponse", status=status)
    if missing:
        errors = SubElement(registry, f"{{{REGREP}}}RegistryErrorList")
        for uid, code in missing.items():
            SubElement(errors, f"{{{REGREP}}}RegistryError", errorCode=code,
                       codeContext=_ERROR_TEXTS.get(code, code), location=uid, severity=_ERROR)
    for uid, content_id in found.items():
        document = SubElement(response, f"{{{XDS}}}DocumentResponse")
        SubElement(document, f"{{{XDS}}}RepositoryUniqueId").text = repository_id
        SubElement(document, f"{{{XDS}}}DocumentUniqueId").text = uid
        SubElement(document, f"{{{XDS}}}mimeType").text = "application/dicom"
        SubElement(SubElement(document, f"{{{XDS}}}Document"), f"{{{XOP}}}Include", href=f"cid:{content_id}")
    return ElementTree.tostring(envelope, encoding="utf-8", xml_declaration=True)
