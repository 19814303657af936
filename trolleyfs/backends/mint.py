"""MINT searcher: ``GET {url}/studies`` answered with ``studySearchResults`` XML.

MINT (Medical Imaging Network Transport, the study search of Vitrea and others) takes DICOM
keywords as query parameters plus ``QueryLevel`` (STUDY, SERIES, INSTANCE), ``IncludeFields``
(comma-separated keywords, from a fixed list per level: :mod:`mint_fields`), ``min_study_date``/``max_study_date`` (YYYYMMDD) and ``limit``, and
answers with elements in the ``http://medical.nema.org/mint`` namespace::

    <studySearchResults xmlns="http://medical.nema.org/mint">
      <study studyUUID="..." lastModified="...">
        <attr tag="0020000d" vr="UI" val="1.2.3"/>
        <series> <attr .../> <instance> <attr .../> </instance> </series>
      </study>
    </studySearchResults>

The XML is parsed hardened (:mod:`trolleyfs.backends.safe_xml`).
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from pydicom.datadict import dictionary_VR, keyword_for_tag

from trolleyfs.backends.dicom_json import tag_number
from trolleyfs.backends.http import HttpSession, build_url, loggable
from trolleyfs.backends.mint_fields import ALLOWED_INCLUDE_FIELDS
from trolleyfs.backends.optional_fields import OptionalFields
from trolleyfs.backends.qido_rs import return_fields
from trolleyfs.backends.safe_xml import parse_xml
from trolleyfs.errors import PacsProtocolError
from trolleyfs.model import Instance, Query, Series, Studies, Study

NAMESPACE = "http://medical.nema.org/mint"
_STUDY, _SERIES, _INSTANCE, _ATTR = (f"{{{NAMESPACE}}}{name}" for name in ("study", "series", "instance", "attr"))
ACCEPT_XML = {"Accept": "application/xml, text/xml"}


class Mint:
    def __init__(self, session: HttpSession, url: str) -> None:
        self.session = session
        self.url = url
        self._optional_fields = OptionalFields("MINT")

    async def find_studies(self, query: Query) -> Studies:
        return await self._optional_fields.search(query.query_level, lambda with_fields: self._search(query, with_fields))

    async def _search(self, query: Query, with_fields: bool) -> Studies:
        url = build_url(self.url, "studies", query_parameters(query, with_fields))
        response = await self.session.get(url, ACCEPT_XML)
        # no paging in MINT: the trolley asks one more than a limit to tell a cut answer
        return Studies(parse_study_search_results(response.content, where=loggable(url)))


def include_fields(query: Query) -> list[str]:
    """The return fields a MINT server accepts at the query's level (see mint_fields)."""
    allowed = ALLOWED_INCLUDE_FIELDS[query.query_level]
    return [name for name in return_fields(query) if name in allowed]


def query_parameters(query: Query, with_fields: bool = True) -> list[tuple[str, str]]:
    params = list(query.matching_keys().items())
    params = [(key, value) for key, value in params if key != "StudyDate"]
    if query.min_study_date:
        params.append(("min_study_date", query.min_study_date.strftime("%Y%m%d")))
    if query.max_study_date:
        params.append(("max_study_date", query.max_study_date.strftime("%Y%m%d")))
    params.append(("QueryLevel", query.query_level.value))
    if with_fields and (fields := include_fields(query)):
        params.append(("IncludeFields", ",".join(fields)))
    if query.limit:
        params.append(("limit", str(query.limit)))
    return params


def parse_study_search_results(body: bytes, where: str = "MINT") -> list[Study]:
    """Studies (with their series and instances, as deep as the answer goes) from MINT XML."""
    root = parse_xml(body, where)
    if root.tag != f"{{{NAMESPACE}}}studySearchResults":
        raise PacsProtocolError(f"{where}: expected MINT studySearchResults, got <{root.tag}>")
    studies = []
    for study_element in root.findall(_STUDY):
        study = Study(uid="", attributes=_attributes(study_element, where))
        study.uid = _uid(study.attributes, "StudyInstanceUID", where)
        for series_element in study_element.findall(_SERIES):
            series = Series(uid="", parent=study, attributes=_attributes(series_element, where))
            series.uid = _uid(series.attributes, "SeriesInstanceUID", where)
            for instance_element in series_element.findall(_INSTANCE):
                attributes = _attributes(instance_element, where)
                uid = _uid(attributes, "SOPInstanceUID", where)
                series.instances.append(Instance(uid=uid, parent=series, attributes=attributes))
            study.series.append(series)
        studies.append(study)
    return studies


def _attributes(element: Element, where: str) -> dict[str, Any]:
    """``<attr tag="00100020" vr="LO" val="ID1"/>`` children as ``{"PatientID": "ID1"}``; a
    multi-valued attribute (backslash-separated) becomes a list; a missing ``val`` is empty."""
    attributes: dict[str, Any] = {}
    for attr in element.findall(_ATTR):
        tag_text = attr.get("tag", "")
        tag = tag_number(tag_text)
        if tag is None:
            raise PacsProtocolError(f"{where}: MINT attr with a malformed tag {tag_text[:16]!r}")
        keyword = keyword_for_tag(tag)
        if not keyword:
            continue  # private or unknown: nothing in the tree uses it
        value = attr.get("val", "")
        vr = attr.get("vr") or dictionary_VR(tag)
        values = value.split("\\") if "\\" in value and vr not in ("LT", "ST", "UT", "UR") else [value]
        attributes[keyword] = values[0] if len(values) == 1 else values
    return attributes


def _uid(attributes: dict[str, Any], keyword: str, where: str) -> str:
    uid = attributes.get(keyword)
    if not isinstance(uid, str) or not uid:
        raise PacsProtocolError(f"{where}: MINT answer has an element without {keyword}")
    return uid
