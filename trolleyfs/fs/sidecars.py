"""What the filesystem says about DICOM attributes besides names: the DICOM JSON sidecars
(``study.json``, ``series.json``, PS3.18 annex F) and the ``user.dicom.<Keyword>`` extended
attributes, both from the attributes a search returned (keyword -> value records) and, for the
xattrs of a cached instance, from its file's header."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

log = logging.getLogger(__name__)

XATTR_PREFIX = "user.dicom."
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT",
     "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
)


def dicom_json(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A keyword record as one DICOM JSON dataset, tags in order, VRs from the dictionary."""
    dataset: dict[str, Any] = {}
    for keyword, value in attributes.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = _vr(tag)
        dataset[f"{tag:08X}"] = _json_element(tag, vr, value)
    return dict(sorted(dataset.items()))


def render_json(document: Any) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _json_element(tag: int, vr: str, value: Any) -> dict[str, Any]:
    values = value if isinstance(value, list) else [value]
    if vr == "SQ" or all(item in ("", None) for item in values):
        return {"vr": vr}  # no value (searches return no sequences this filesystem shows)
    try:
        element = DataElement(tag, vr, values if len(values) > 1 else values[0], validation_mode=pydicom_config.IGNORE)
        return element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 30)
    except Exception:  # noqa: BLE001 - a PACS value pydicom cannot type: keep it as text
        texts = [None if item in ("", None) else str(item) for item in values]  # empty values stay null (F.2.5)
        if vr == "PN":
            return {"vr": vr, "Value": [None if text is None else {"Alphabetic": text} for text in texts]}
        return {"vr": vr, "Value": texts}


def xattr_values(attributes: Mapping[str, Any]) -> dict[str, bytes]:
    """``user.dicom.<Keyword>`` -> the value as text (multi-values joined by ``\\``)."""
    values = {}
    for keyword, value in attributes.items():
        if tag_for_keyword(keyword) is None or _vr(tag_for_keyword(keyword)) == "SQ":
            continue
        values[XATTR_PREFIX + keyword] = text_of(value).encode("utf-8", "surrogateescape")
    return values


def text_of(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\\".join(text_of(item) for item in value)
    return "" if value is None else str(value)


def header_attributes(fd: int) -> dict[str, Any]:
    """The text-like top-level elements of a Part-10 file's header (no pixel data read);
    blocking, for a worker thread."""
    with os.fdopen(os.dup(fd), "rb") as file:
        try:
            return dict(_text_elements(pydicom.dcmread(file, stop_before_pixels=True)))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a damaged file: no xattrs then
            log.info("cannot read the header of a cached file: %s", type(exc).__name__)
            return {}


def _text_elements(dataset: Dataset) -> Iterable[tuple[str, Any]]:
    for element in dataset:
        if element.tag.is_private or not element.keyword or element.VR not in _TEXT_VRS:
            continue
        value = element.value
        if isinstance(value, (MultiValue, list, tuple)):
            value = [str(item) for item in value]
        elif value is not None:
            value = str(value)
        yield element.keyword, value
