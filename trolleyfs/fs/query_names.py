"""The names of ``/query`` folders: one name stands for one study-level Query, and back.

A name is ``Key=Value`` pairs joined by ``&``, e.g.
``PatientName=DOE*&StudyDate=20240101-20240131&ModalitiesInStudy=CT``:

- keys are the study-level keywords of :data:`KEYS` plus ``limit=N``, each at most once;
- values go to the PACS as they are, its wildcards ``*`` and ``?`` included; ``%2F``, ``%26``
  and ``%25`` stand for ``/``, ``&`` and ``%`` (no other escape exists);
- StudyDate and PatientBirthDate take ``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``-YYYYMMDD`` or
  ``YYYYMMDD-`` (real dates, the first not after the second);
- at least one key other than ``limit`` (a query without one would search the whole archive).

:func:`query_name` writes the canonical name of a Query (keys in the order of :data:`KEYS`,
upper-case escapes); :func:`parse_query_name` reads any valid name. A malformed one raises
InvalidQuery with a message that names the key and the rule, never the value (values may be
patient data, and the message is logged).
"""

from __future__ import annotations

import datetime
import re

from pydicom.datadict import tag_for_keyword

from trolleyfs.errors import InvalidQuery
from trolleyfs.model import Query

KEYS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "StudyID",
)
LIMIT = "limit"
_ESCAPES = {"%2F": "/", "%26": "&", "%25": "%"}
_ESCAPE = re.compile(r"%(..)?")
_DATE_RANGE = re.compile(r"([0-9]{8})?(-)?([0-9]{8})?")


def parse_query_name(name: str) -> Query:
    if not name:
        raise InvalidQuery("empty query: give Key=Value pairs joined by &")
    values: dict[str, str] = {}
    for pair in name.split("&"):
        key, equals, raw = pair.partition("=")
        if not equals:
            raise InvalidQuery("every part of a query must be Key=Value (parts are joined by &)")
        if key not in KEYS and key != LIMIT:
            # only a DICOM keyword is repeated: anything else typed there may be patient data
            what = f"key {key!r}" if tag_for_keyword(key) is not None else "an unknown key"
            raise InvalidQuery(f"{what} is not a query key; known: {', '.join(KEYS)}, {LIMIT}")
        if key in values:
            raise InvalidQuery(f"{key} is given twice")
        value = _unescape(key, raw)
        if not value:
            raise InvalidQuery(f"{key} has an empty value")
        values[key] = value
    fields: dict[str, object] = {}
    for key, value in values.items():
        if key == LIMIT:
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                raise InvalidQuery("limit must be a whole number of at least 1")
            fields["limit"] = int(value)
        elif key == "StudyDate":
            fields["min_study_date"], fields["max_study_date"] = _date_range(key, value)
        elif key == "PatientBirthDate":
            _date_range(key, value)
            fields[key] = value
        else:
            fields[key] = value
    if set(values) == {LIMIT}:
        raise InvalidQuery("limit alone would search the whole archive: add a key")
    return Query(**fields)


def query_name(query: Query) -> str:
    """The canonical name of a study-level ``query``."""
    keys = query.matching_keys()
    pairs = [f"{key}={_escape(keys[key])}" for key in KEYS if key in keys]
    if query.limit:
        pairs.append(f"{LIMIT}={query.limit}")
    return "&".join(pairs)


def _unescape(key: str, raw: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escape = match.group(0).upper()
        if escape not in _ESCAPES:
            raise InvalidQuery(f"{key}: % must start %2F, %26 or %25 (for /, & and %)")
        return _ESCAPES[escape]

    return _ESCAPE.sub(replace, raw)


def _escape(value: str) -> str:
    return value.replace("%", "%25").replace("/", "%2F").replace("&", "%26")


def _date_range(key: str, value: str) -> tuple[datetime.date | None, datetime.date | None]:
    """``A``, ``A-B``, ``-B`` or ``A-`` -> (first day, last day), None for an open end."""
    match = _DATE_RANGE.fullmatch(value)
    low_text, dash, high_text = match.groups() if match else (None, None, None)
    if not (low_text and not dash and not high_text) and not (dash and (low_text or high_text)):
        raise InvalidQuery(f"{key} must be YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD-")
    low, high = _date(key, low_text), _date(key, high_text)
    if not dash:
        high = low
    if low and high and low > high:
        raise InvalidQuery(f"{key}: the range starts after it ends")
    return low, high


def _date(key: str, text: str | None) -> datetime.date | None:
    if text is None:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise InvalidQuery(f"{key}: not a real date (YYYYMMDD)") from None
