"""QIDO-RS searcher (PS3.18 §10.6): hierarchical and relational study, series and instance queries.

A series or instance query that names its study (and series) goes down the hierarchy
(``/studies/{uid}/series``); one that does not asks the relational resource (``/series``,
``/instances``). Answers are paged with ``limit``/``offset`` until a page comes back short.
"""

from __future__ import annotations

import json
import re

from trolleyfs.backends.dicom_json import record_from_dicom_json
from trolleyfs.backends.http import HttpSession, build_url, loggable
from trolleyfs.errors import PacsProtocolError
from trolleyfs.model import Query, QueryLevel, Study, build_studies
from pydicom.datadict import tag_for_keyword

_NOT_RAW = re.compile(r"[^A-Za-z0-9._~*?^-]")
ACCEPT_JSON = {"Accept": "application/dicom+json"}

# Asked for on every query, so that a directory listing can name and size its entries.
DEFAULT_FIELDS = {
    QueryLevel.STUDY: ("PatientID", "PatientName", "StudyDate", "StudyDescription", "ModalitiesInStudy"),
    QueryLevel.SERIES: ("Modality", "SeriesNumber", "SeriesDescription"),
    QueryLevel.INSTANCE: (
        "SOPClassUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
    ),
}


class QidoRS:
    def __init__(self, session: HttpSession, url: str, page_size: int = 500) -> None:
        self.session = session
        self.url = url
        self.page_size = page_size

    async def find_studies(self, query: Query) -> list[Study]:
        path, path_keys = _resource(query)
        params = [(key, _raw_safe(value)) for key, value in query.matching_keys().items() if key not in path_keys]
        params += [("includefield", f"{tag_for_keyword(name):08X}") for name in return_fields(query)]
        records: list[dict] = []
        offset = 0
        while True:
            page_size = min(self.page_size, query.limit - len(records)) if query.limit else self.page_size
            page = await self._page(path, params + [("limit", str(page_size)), ("offset", str(offset))])
            records += page
            offset += len(page)
            if len(page) < page_size or (query.limit and len(records) >= query.limit):
                break
        return build_studies(records, query.query_level)

    async def _page(self, path: str, params: list[tuple[str, str]]) -> list[dict]:
        url = build_url(self.url, path, params)
        response = await self.session.get(url, ACCEPT_JSON)
        if response.status_code == 204:
            return []
        if not response.content.strip():
            raise PacsProtocolError(f"QIDO-RS {loggable(url)}: HTTP 200 with an empty body (no results is 204 or [])")
        try:
            datasets = json.loads(response.content)
        except ValueError as exc:
            raise PacsProtocolError(f"QIDO-RS {loggable(url)}: answer is not JSON: {exc}") from exc
        if not isinstance(datasets, list):
            raise PacsProtocolError(f"QIDO-RS {loggable(url)}: answer is not a JSON array")
        return [record_from_dicom_json(dataset) for dataset in datasets]


def _resource(query: Query) -> tuple[str, set[str]]:
    """The QIDO-RS resource path for ``query`` and the keys that path already expresses."""
    study, series = query.StudyInstanceUID, query.SeriesInstanceUID
    hierarchical_study = study and "*" not in study and "?" not in study
    hierarchical_series = hierarchical_study and series and "*" not in series and "?" not in series
    if query.query_level is QueryLevel.STUDY:
        return "studies", set()
    if query.query_level is QueryLevel.SERIES:
        return (f"studies/{study}/series", {"StudyInstanceUID"}) if hierarchical_study else ("series", set())
    if hierarchical_series:
        return f"studies/{study}/series/{series}/instances", {"StudyInstanceUID", "SeriesInstanceUID"}
    if hierarchical_study:
        return f"studies/{study}/instances", {"StudyInstanceUID"}
    return "instances", set()


def _raw_safe(value: str) -> str:
    """Orthanc does not percent-decode query strings, so a character that cannot travel raw would
    never match: it is sent as the single-character wildcard ``?`` instead. The answer is then a
    superset, which callers needing an exact match (the filesystem's PatientID lookup) filter."""
    return _NOT_RAW.sub("?", value)


def return_fields(query: Query) -> list[str]:
    """The attributes a search asks back: the usual ones of each level down to its own, then
    ``include_fields``."""
    levels = list(QueryLevel)[: list(QueryLevel).index(query.query_level) + 1]
    wanted = [name for level in levels for name in DEFAULT_FIELDS[level]] + list(query.include_fields)
    return list(dict.fromkeys(wanted))
