"""DICOM-QR searcher: C-FIND (Study Root) at STUDY, SERIES and IMAGE level over pynetdicom.

The same :class:`~trolleyfs.model.Query` as QIDO-RS: matching keys with wildcards and date
ranges, the level's usual return keys plus ``include_fields``. Every status is read: pending
answers are collected, success and cancel end the search, warnings are logged, failures and a
missing status (timeout, abort) raise PacsError.

Searches are hierarchical, as PS3.4 C.4.1.2.1 has them (relational queries are an option few
SCPs offer; dcmqrscp answers 0xC001 without it): a SERIES search without a StudyInstanceUID, or
an IMAGE search without a SeriesInstanceUID, is asked level by level, each answer of the level
above giving the UID the next search needs and the attributes of its level.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from trolleyfs.backends.dimse import DimsePeer, failure, record_from_identifier, status_category
from trolleyfs.backends.optional_fields import OptionalFields
from trolleyfs.errors import PacsBadRequest
from trolleyfs.model import LISTING_FIELDS, Query, QueryLevel, Studies, build_studies, is_uid

log = logging.getLogger(__name__)

DIMSE_LEVEL = {QueryLevel.STUDY: "STUDY", QueryLevel.SERIES: "SERIES", QueryLevel.INSTANCE: "IMAGE"}
_IDENTIFIER_DOES_NOT_MATCH = 0xA900
_UNABLE_TO_PROCESS = 0xC000
_PARENT = {QueryLevel.SERIES: (QueryLevel.STUDY, "StudyInstanceUID"), QueryLevel.INSTANCE: (QueryLevel.SERIES, "SeriesInstanceUID")}
"""The level above each level, and the unique key of it a search at this level must name."""
_UNIQUE_KEYS = {
    QueryLevel.STUDY: ("StudyInstanceUID",),
    QueryLevel.SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
    QueryLevel.INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}


class DicomQR:
    def __init__(self, peer: DimsePeer) -> None:
        self.peer = peer
        self._optional_fields = OptionalFields("C-FIND")

    async def find_studies(self, query: Query) -> Studies:
        return await self._optional_fields.search(query.query_level, lambda with_fields: self._search(query, with_fields))

    async def _search(self, query: Query, with_fields: bool) -> Studies:
        return build_studies(await self._records(query, with_fields), query.query_level)

    async def _records(self, query: Query, with_fields: bool = True) -> list[dict[str, Any]]:
        parent = _PARENT.get(query.query_level)
        if parent is None or is_uid(getattr(query, parent[1])):
            return await self._find_records(query, with_fields)
        level, _ = parent
        above = query.model_copy(update={"query_level": level, **({"SeriesInstanceUID": ""} if level is QueryLevel.STUDY else {})})
        records: list[dict[str, Any]] = []
        for parent_record in await self._records(above, with_fields):
            uids = {key: str(parent_record.get(key, "")) for key in _UNIQUE_KEYS[level]}
            if not all(is_uid(uid) for uid in uids.values()):
                continue  # the next search could not name it
            below = Query(**{"SeriesInstanceUID": query.SeriesInstanceUID, **uids}, query_level=query.query_level,
                          include_fields=query.include_fields)
            records += [{**parent_record, **record} for record in await self._find_records(below, with_fields)]
        return records

    async def _find_records(self, query: Query, with_fields: bool) -> list[dict[str, Any]]:
        identifier = find_identifier(query, with_fields)
        return await self.peer.run(
            [build_context(StudyRootQueryRetrieveInformationModelFind)],
            lambda association: self._find(association, identifier, query.limit),
            reuse="find",
        )

    def _find(self, association: Association, identifier: Dataset, limit: int | None) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        operation = f"C-FIND at {self.peer}"
        responses = association.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        for status, answer in responses:
            code, category = status_category(status, operation)
            if category == "Pending":
                if answer is not None:
                    records.append(record_from_identifier(answer))
                if limit is not None and len(records) >= limit:
                    association.abort()  # enough: stop the peer sending the rest
                    break
            elif category in ("Success", "Cancel"):
                break
            elif category == "Warning":
                log.warning("%s: warning status 0x%04X", operation, code)
            elif code == _IDENTIFIER_DOES_NOT_MATCH or code & 0xF000 == _UNABLE_TO_PROCESS:
                raise PacsBadRequest(str(failure(status, operation, code)))  # maybe our return keys: ask without
            else:
                raise failure(status, operation, code)
        return records


def find_identifier(query: Query, with_fields: bool = True) -> Dataset:
    """The C-FIND identifier of ``query``; in UTF-8 (ISO_IR 192) when a value needs more than
    ASCII. Answers are decoded by the character set each one declares, whatever we asked in.
    Without ``with_fields`` it asks back the unique keys only (a server refusing return keys)."""
    identifier = Dataset()
    keys = query.matching_keys()
    if not all(value.isascii() for value in keys.values()):
        identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = DIMSE_LEVEL[query.query_level]
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    optional = (*LISTING_FIELDS[query.query_level], *query.include_fields) if with_fields else ()
    return_keys = (*_UNIQUE_KEYS[query.query_level], *optional)
    for keyword in return_keys:
        if keyword not in identifier:
            setattr(identifier, keyword, None)
    return identifier
