"""The naming rules: how a PatientID, a study, a series and an instance become safe file names.

Rules (docs/semantics.md repeats them for users):

- ``<patient>`` is the PatientID, percent-encoded where a character is unsafe or ambiguous:
  ``%``, ``/``, control characters, the wildcards ``*`` ``?`` ``\\``, and a leading ``.``; an
  empty PatientID is ``%``. The encoding is reversible, so a directory can be looked up by
  PatientID without listing ``/patients`` first. Accession numbers are encoded the same way.
- ``<study>``, ``<series>`` and ``<instance>`` come from naming templates (options
  ``study_name``, ``series_name``, ``instance_name``); by default
  ``<StudyDate>_<StudyDescription>_<StudyInstanceUID>``,
  ``<SeriesNumber>_<Modality>_<SeriesDescription>_<SeriesInstanceUID>`` and
  ``<InstanceNumber>_<SOPInstanceUID>.dcm``. Values are reduced to letters and digits of any
  script (NFC), space and ``+.-``, and shortened (names stay within 240 bytes of UTF-8); missing
  ones are left out. If two entries still end up with one name, later ones (by
  UID order) get ``~2``, ``~3``...
"""

from __future__ import annotations

import calendar
import hashlib
import re
import string
import time
import unicodedata
from typing import Any
from urllib.parse import quote, unquote

from pydicom.datadict import tag_for_keyword

_PATIENT_SAFE = " !#$&'()+,-.;=@[]^_`{|}~"
_EMPTY_PATIENT_ID = "%"
_UNSAFE_PART = re.compile(r"(?:[^\w +.-]|_)+")  # \w: letters and digits of any script (and _, the separator)
_UNSAFE_LITERAL = re.compile(r"[^A-Za-z0-9 +._-]+")
_MAX_PART = 48
_MAX_NAME = 240  # bytes of UTF-8; the kernel allows 255
_FORMATTER = string.Formatter()

DEFAULT_STUDY_NAME = "{StudyDate}_{StudyDescription}_{StudyInstanceUID}"
DEFAULT_SERIES_NAME = "{SeriesNumber:03}_{Modality}_{SeriesDescription}_{SeriesInstanceUID}"
DEFAULT_INSTANCE_NAME = "{InstanceNumber:04}_{SOPInstanceUID}"


def text_bytes(text: str) -> bytes:
    """``text`` as UTF-8. Bytes that were not UTF-8 (decoded with surrogateescape) come back as
    they were; a lone surrogate (a JSON answer may hold one) is kept as its surrogatepass bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def patient_dir_name(patient_id: str) -> str:
    if not patient_id:
        return _EMPTY_PATIENT_ID
    # a PatientID that was not valid UTF-8 keeps its bytes, percent-encoded
    name = quote(text_bytes(patient_id), safe=_PATIENT_SAFE)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:  # past NAME_MAX: shortened, found by listing only (not reversible)
        digest = hashlib.sha256(text_bytes(patient_id)).hexdigest()[:16]
        name = f"{name[:_MAX_NAME - 20]}%~{digest}"  # "%~" is no percent-escape: never reversed
    return name


def patient_id_from_name(name: str) -> str | None:
    """The PatientID a directory name stands for, or None if no PatientID is named so."""
    if name == _EMPTY_PATIENT_ID:
        return ""
    patient_id = unquote(name, errors="surrogateescape") if "%" in name else name
    return patient_id if patient_dir_name(patient_id) == name else None


def searchable(value: str) -> bool:
    """Whether an exact match on ``value`` can be asked of a PACS: an empty value or one holding a
    wildcard (or a backslash, the multi-value separator) would match far more than itself."""
    return bool(value) and not any(char in value for char in "*?\\")


class NameTemplate:
    """A naming template: ``{Keyword}`` fields with the format spec of ``str.format``
    (``{SeriesNumber:03}``, for numbers: a value that is no number is left out). Each value is reduced to the safe characters before it goes in, UIDs
    keep their own rule, a missing or unformattable value is left out, and runs of ``_`` (the
    separator of the defaults) collapse, so that the defaults give the names documented above."""

    def __init__(self, template: str, suffix: str = "") -> None:
        self.template = template
        self.suffix = suffix
        try:
            self._parsed = list(_FORMATTER.parse(template))
        except ValueError as exc:
            raise ValueError(f"naming template {template!r}: {exc}") from None
        fields = [name for _, name, _, _ in self._parsed if name is not None]
        unknown = [name for name in fields if not name or tag_for_keyword(name) is None]
        if unknown:
            raise ValueError(f"naming template {template!r}: not DICOM keywords: {', '.join(map(repr, unknown))}")
        if any(conversion for _, _, _, conversion in self._parsed):
            raise ValueError(f"naming template {template!r}: conversions (!r, !s) are not supported")
        self.fields = tuple(dict.fromkeys(fields))
        """The keywords the template reads (searches ask for them)."""

    def name(self, attributes: dict[str, Any]) -> str:
        text = "".join(
            _UNSAFE_LITERAL.sub("-", literal) + _field_text(attributes.get(name), name, spec)
            for literal, name, spec, _ in self._parsed
        )
        text = _clip(re.sub(r"_{2,}", "_", text).strip("_ .-"), _MAX_NAME - len(self.suffix) - 8).rstrip("_ .-")
        return (text or "unnamed") + self.suffix


def _field_text(value: Any, keyword: str | None, spec: str | None) -> str:
    if keyword is None or value is None or value == "" or value == []:
        return ""
    if keyword.endswith("UID"):
        return _uid_part(_text(value))
    if spec:  # a format spec is for numbers: a value that is none is left out
        try:
            return _part(format(_number(value), spec))
        except (TypeError, ValueError, ArithmeticError):
            return ""
    return _part(value)


def _number(value: Any) -> int | float:
    try:
        return int(value)
    except (TypeError, ValueError):
        return float(value)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(map(str, value))
    return "" if value is None else str(value)


def _part(value: Any, limit: int = _MAX_PART) -> str:
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    text = unicodedata.normalize("NFC", text)
    return _UNSAFE_PART.sub("-", text).strip(" .-")[:limit].strip(" .-")


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text_bytes(text)[:max_bytes].decode("utf-8", "ignore")


def _uid_part(uid: str) -> str:
    """A UID as it stands in a name; one that is not a plain UID (a PACS may send anything) gets
    a short hash of its raw value, so the part is never empty and stays distinct."""
    clean = _part(uid, 64)
    if clean == uid:
        return clean
    digest = hashlib.sha256(text_bytes(uid)).hexdigest()[:10]
    return f"{clean}-{digest}" if clean else digest


def uid_name(uid: str) -> str:
    """A directory named by a UID alone (``/studies/<StudyInstanceUID>``)."""
    return _uid_part(uid)


def unique_names(named: list[tuple[str, str]], reserved: frozenset[str] = frozenset()) -> dict[str, str]:
    """(name, uid) pairs -> {unique name: uid}, disambiguating clashes (with each other and with
    ``reserved`` names such as ``study.json``) in UID order."""
    result: dict[str, str] = {}
    for name, uid in sorted(named, key=lambda pair: (pair[0], pair[1])):
        candidate, counter = name, 1
        while candidate in result or candidate in reserved:
            counter += 1
            stem, dot, suffix = name.rpartition(".") if name.endswith(".dcm") else (name, "", "")
            candidate = f"{stem}~{counter}{dot}{suffix}"
        result[candidate] = uid
    return result


def study_time(attributes: dict[str, Any]) -> float | None:
    """Seconds since the epoch of a StudyDate (UTC midnight), if it is a valid date."""
    try:
        return float(calendar.timegm(time.strptime(str(attributes.get("StudyDate", "")), "%Y%m%d")))
    except (ValueError, OverflowError):
        return None
