"""DICOM JSON (PS3.18 annex F) datasets to the flat keyword records :func:`build_studies` takes."""

from __future__ import annotations

import re
from typing import Any

from pydicom.datadict import keyword_for_tag

from trolleyfs.errors import PacsProtocolError
from trolleyfs.model import PN_GROUPS

_TAG = re.compile(r"[0-9A-Fa-f]{8}")


def record_from_dicom_json(dataset: Any) -> dict[str, Any]:
    """``{"0020000D": {"vr": "UI", "Value": ["1.2"]}}`` -> ``{"StudyInstanceUID": "1.2"}``.

    One value becomes a scalar, several a list, none an empty string; a person name becomes its
    groups as text
    (``Alphabetic=Ideographic=Phonetic``). Tags pydicom does not know (private ones) are left out.
    """
    if not isinstance(dataset, dict):
        raise PacsProtocolError(f"DICOM JSON dataset is not an object: {str(dataset)[:80]}")
    record: dict[str, Any] = {}
    for tag, element in dataset.items():
        number = tag_number(tag)
        if number is None:
            raise PacsProtocolError(f"DICOM JSON has a malformed tag {str(tag)[:16]!r}")
        keyword = keyword_for_tag(number)
        if not keyword or not isinstance(element, dict):
            continue
        values = element.get("Value") or []
        if not isinstance(values, list):
            raise PacsProtocolError(f"DICOM JSON element {tag} has a Value that is not an array")
        values = [_plain(value) for value in values]
        record[keyword] = values[0] if len(values) == 1 else (values or "")
    return record


def tag_number(text: Any) -> int | None:
    """``"0020000D"`` -> 0x0020000D; None for anything but 8 hexadecimal digits (PS3.18 F.2.1.1,
    and MINT's ``tag`` attribute)."""
    return int(text, 16) if isinstance(text, str) and _TAG.fullmatch(text) else None


def _plain(value: Any) -> Any:
    """A DICOM JSON value as the text a C-FIND answer would hold: a person name object becomes
    ``Alphabetic=Ideographic=Phonetic`` (trailing empty groups left out)."""
    if isinstance(value, dict):
        return "=".join(str(value.get(group) or "") for group in PN_GROUPS).rstrip("=")
    return value
