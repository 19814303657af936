"""QIDO-RS searcher (PS3.18 §10.6): hierarchical and relational study, series and instance queries.

A series or instance query that names its study (and series) goes down the hierarchy
(``/studies/{uid}/series``); one that does not asks the relational resource (``/series``,
``/instances``). Answers are paged with ``limit``/``offset`` to their end (see ``_search``), and
a server that refuses our optional return fields is asked again without them.
"""

from __future__ import annotations

import json
import logging
import re

from trolleyfs.backends.dicom_json import record_from_dicom_json
from trolleyfs.backends.http import HttpSession, build_url, loggable
from trolleyfs.backends.optional_fields import OptionalFields
from trolleyfs.errors import PacsProtocolError
from trolleyfs.model import LISTING_FIELDS, Query, QueryLevel, Studies, build_studies, is_uid
from pydicom.datadict import tag_for_keyword

log = logging.getLogger(__name__)

_SILENT_CAP_MINIMUM = 50
"""A short page of at least this many results may be a server's silent cap: one more is asked."""
_WARNING_299 = re.compile(r"\s*299\s")
_NOT_RAW = re.compile(r"[^A-Za-z0-9._~*?^-]")
ACCEPT_JSON = {"Accept": "application/dicom+json"}


class QidoRS:
    def __init__(self, session: HttpSession, url: str, page_size: int = 500) -> None:
        self.session = session
        self.url = url
        self.page_size = page_size
        self._cap_known = False
        """Whether this server was seen cutting pages silently (then page_size is its cap)."""
        self._optional_fields = OptionalFields("QIDO-RS")

    async def find_studies(self, query: Query) -> Studies:
        return await self._optional_fields.search(
            query.query_level, lambda with_fields: self._search(query, return_fields(query) if with_fields else [])
        )

    async def _search(self, query: Query, fields: list[str]) -> Studies:
        """Every page of the answer. A page shorter than asked ends the answer, except when the
        server says it cut it (``Warning: 299``) or when it is long enough to be a silent cap of
        the server's own (then one more page is asked; a server seen capping is paged at its cap)."""
        path, path_keys = _resource(query)
        params = [(key, _raw_safe(value)) for key, value in query.matching_keys().items() if key not in path_keys]
        params += [("includefield", f"{tag_for_keyword(name):08X}") for name in fields]
        records: list[dict] = []
        truncated = ""
        checking = 0  # the length of a short page whose end is being checked
        previous_first: dict | None = None
        server_cut = False
        while not (query.limit and len(records) >= query.limit):
            wanted = min(self.page_size, query.limit - len(records)) if query.limit else self.page_size
            cut_before = server_cut
            page, server_cut = await self._page(path, params + [("limit", str(wanted)), ("offset", str(len(records)))])
            if not page:
                if cut_before:
                    truncated = "the PACS said it cut its answer (Warning: 299) but gave no further page"
                break
            if page[0] == previous_first:  # it ignores offset: a short page was all, a full one not
                if not checking:
                    truncated = "the PACS answered the same page again (it ignores offset)"
                break
            previous_first = page[0]
            if checking:
                log.info("QIDO-RS pages silently at %d results; paging at that size from now on", checking)
                self.page_size, self._cap_known, wanted, checking = checking, True, checking, 0
            records += page
            if len(page) >= wanted or server_cut:
                continue
            if self._cap_known or len(page) < _SILENT_CAP_MINIMUM:
                break
            checking = len(page)
        return build_studies(records, query.query_level, truncated)

    async def _page(self, path: str, params: list[tuple[str, str]]) -> tuple[list[dict], bool]:
        """One page, and whether the server said it cut it short (``Warning: 299``)."""
        url = build_url(self.url, path, params)
        response = await self.session.get(url, ACCEPT_JSON)
        server_cut = any(_WARNING_299.match(value) for value in response.headers.get_list("warning", split_commas=True))
        if response.status_code == 204:
            return [], server_cut
        if not response.content.strip():
            raise PacsProtocolError(f"QIDO-RS {loggable(url)}: HTTP 200 with an empty body (no results is 204 or [])")
        try:
            datasets = json.loads(response.content)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested past any real answer
            raise PacsProtocolError(f"QIDO-RS {loggable(url)}: answer is not JSON: {type(exc).__name__}") from None
        if not isinstance(datasets, list):
            raise PacsProtocolError(f"QIDO-RS {loggable(url)}: answer is not a JSON array")
        return [record_from_dicom_json(dataset) for dataset in datasets], server_cut


def _resource(query: Query) -> tuple[str, set[str]]:
    """The QIDO-RS resource path for ``query`` and the keys that path already expresses."""
    study, series = query.StudyInstanceUID, query.SeriesInstanceUID
    hierarchical_study = is_uid(study)  # anything else (a wildcard, a hostile value) goes in the query string
    hierarchical_series = hierarchical_study and is_uid(series)
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
    wanted = [name for level in levels for name in LISTING_FIELDS[level]] + list(query.include_fields)
    return list(dict.fromkeys(wanted))
