"""De-identification of one instance, and of the attributes names are made of, for ``/deid``.

The profile is DICOM PS3.15 Annex E's Basic Application Level Confidentiality Profile as the
``dicom-anonymizer`` library implements it (its table of the standard's 2026c edition: which
attributes are removed, emptied, replaced or have their UIDs replaced, sequences included), with
what the library leaves to its caller made consistent and keyed by a secret (HMAC-SHA-256):

- every UID the profile replaces becomes ``2.25.<HMAC of the UID>``, the same on every file,
  study and mount for the same secret, so series stay series and references still point;
- PatientID and PatientName become one pseudonym per patient (``ANON-<HMAC of PatientID>``);
- private elements are removed (the library's default; no "safe private" list is offered);
- the options of PS3.15 Table E.1-1 that a mount can turn on: Retain Longitudinal Temporal
  Information with Modified Dates (each date moved by a secret number of days per patient),
  Retain Device Identity, Retain Patient Characteristics;
- ``PatientIdentityRemoved=YES``, ``DeidentificationMethod`` and its code sequence record what was
  done. Pixel data is never changed: images that may show burned-in text are refused instead
  (:meth:`Deidentifier.refuse_unchecked`, :class:`BurnedInText`).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dicomanonymizer
import pydicom
from dicomanonymizer import simpledicomanonymizer as library
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from trolleyfs.errors import PacsProtocolError, PacsRefused

TABLE = "dicomfields_2026c"
"""The edition of PS3.15 Table E.1-1 the library's actions come from."""
BURNED_IN_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC"})
"""Modalities whose pixels often hold text (ultrasound, secondary captures, photographs,
endoscopy, microscopy, scanned documents): refused unless ``deid_burned_in_checked`` names them."""
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
"""Secondary Capture SOP classes begin so (whatever the Modality says): refused as SC."""
DEVICE_IDENTITY = (
    "StationName", "DeviceSerialNumber", "DeviceUID", "DeviceLabel", "DeviceDescription", "GantryID",
    "DetectorID", "PlateID", "CassetteID", "GeneratorID", "SourceSerialNumber",
    "PerformedStationName", "ScheduledStationName", "ScheduledStationAETitle", "PerformedStationAETitle",
)
"""What Retain Device Identity keeps (the K cells of that column of Table E.1-1)."""
PATIENT_CHARACTERISTICS = (
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "SmokingStatus",
    "PregnancyStatus", "PatientSexNeutered", "AdditionalPatientHistory",
)
"""What Retain Patient Characteristics keeps (the K and C cells of that column of Table E.1-1)."""
NAME_ATTRIBUTES = (
    "Modality", "ModalitiesInStudy", "SeriesNumber", "InstanceNumber", "SOPClassUID", "Rows", "Columns",
    "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances",
)
"""Attributes a name or an estimate under /deid may read (none identifies anyone)."""
_REMAPPED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_MAX_SHIFT_DAYS = 3650
_CODES = {  # CID 7050 De-identification Method
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient": ("113108", "Retain Patient Characteristics Option"),
    "device": ("113109", "Retain Device Identity Option"),
}
_current = threading.local()
"""The Deidentifier whose UIDs the library's nested replacements use, in this thread."""


class BurnedInText(PacsRefused):
    """The image may show identifying text in its pixels: no de-identified copy is served."""


@dataclass(frozen=True)
class DeidOptions:
    shift_dates: bool = False
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = False
    burned_in_checked: tuple[str, ...] = ()


class Deidentifier:
    def __init__(self, secret: str, options: DeidOptions = DeidOptions()) -> None:
        self._key = secret.encode()
        self.options = options
        described = f"{TABLE}:{options}:{dicomanonymizer.__name__}"
        self.version = hmac.new(self._key, described.encode(), hashlib.sha256).hexdigest()[:16]
        """Names the secret and options in cache keys: a change makes every file again."""
        self._actions = self._rules()

    # --- pseudonyms --------------------------------------------------------------------------

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """The remapped UID: ``2.25.`` and 128 bits of the HMAC of the original (at most 44 characters)."""
        if not uid:
            return uid
        return "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        return "ANON-" + self._digest("patient", patient_id).hex()[:12].upper()

    def date_shift(self, patient_id: str) -> datetime.timedelta:
        """How far back every date of this patient is moved (1 to 3650 days)."""
        return datetime.timedelta(days=1 + int.from_bytes(self._digest("dates", patient_id)[:4], "big") % _MAX_SHIFT_DAYS)

    def visible(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """What of a search record a /deid name may show: the pseudonym, remapped UIDs and
        attributes that identify no one."""
        shown = {keyword: attributes[keyword] for keyword in NAME_ATTRIBUTES if keyword in attributes}
        for keyword in _REMAPPED_UIDS:
            if keyword in attributes:
                shown[keyword] = self.uid(str(attributes[keyword]))
        if "PatientID" in attributes:
            shown["PatientID"] = self.pseudonym(str(attributes["PatientID"] or ""))
        return shown

    # --- refusals ------------------------------------------------------------------------------

    def refuse_unchecked(self, modality: str, sop_class_uid: str) -> None:
        """Raise BurnedInText for a modality known for burned-in text (unless checked)."""
        kind = "SC" if sop_class_uid.startswith(SECONDARY_CAPTURE) else modality.upper()
        if kind in BURNED_IN_MODALITIES and kind not in self.options.burned_in_checked:
            raise BurnedInText(
                f"/deid refused a {kind} image: its modality often holds burned-in text "
                f"(deid_burned_in_checked={kind} serves it once checked)"
            )

    # --- files ---------------------------------------------------------------------------------

    def deidentify(self, data: bytes) -> bytes:
        """A Part-10 file, de-identified (see the module docstring). Runs in a worker thread."""
        try:
            dataset = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - whatever pydicom cannot read is not served
            raise PacsProtocolError(f"/deid cannot read the instance: {type(exc).__name__}") from exc
        if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            raise BurnedInText("/deid refused an image flagged BurnedInAnnotation=YES (text in its pixels)")
        self.refuse_unchecked(str(dataset.get("Modality", "")), str(dataset.get("SOPClassUID", "")))
        patient_id = str(dataset.get("PatientID", ""))
        if self.options.shift_dates:
            self._shift_dates(dataset, self.date_shift(patient_id))
        _current.deidentifier = self
        try:
            library.anonymize_dataset(dataset, self._actions, delete_private_tags=True,
                                      base_rules_gen=lambda: library.initialize_actions(TABLE))
        except (NotImplementedError, ValueError, TypeError, KeyError) as exc:
            raise PacsProtocolError(f"/deid cannot de-identify the instance: {type(exc).__name__}: {exc}") from exc
        finally:
            _current.deidentifier = None
        pseudonym = self.pseudonym(patient_id)
        dataset.PatientID = dataset.PatientName = pseudonym
        self._record(dataset)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def _rules(self) -> dict[tuple[int, int], Callable[[Dataset, tuple[int, int]], None]]:
        """The library's actions, changed where an option keeps an attribute or where the
        replacement must be keyed: U (replace the UID) remaps by HMAC."""
        keep = library.keep
        rules: dict[tuple[int, int], Callable[[Dataset, tuple[int, int]], None]] = {}
        tables = dicom_anonymization_database_selector(TABLE)
        for tag in tables["U_TAGS"]:
            rules[tag] = self._remap_uid
        kept = [*(DEVICE_IDENTITY if self.options.retain_device_identity else ()),
                *(PATIENT_CHARACTERISTICS if self.options.retain_patient_characteristics else ())]
        for keyword in kept:
            tag = tag_for_keyword(keyword)
            if tag is not None:
                rules[(tag >> 16, tag & 0xFFFF)] = keep
        if self.options.shift_dates:  # already moved: every date and date-time stays as moved
            for category in tables.values():
                for tag in category:
                    if len(tag) == 2 and _vr_of(tag) in ("DA", "DT"):
                        rules[tag] = keep
        return rules

    def _remap_uid(self, dataset: Dataset, tag: tuple[int, int]) -> None:
        element = dataset.get(tag)
        if element is None or not element.value:
            return
        if element.VR == "UI":
            values = element.value if isinstance(element.value, (list, MultiValue)) else None
            element.value = [self.uid(str(v)) for v in values] if values is not None else self.uid(str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                for inner in item:
                    if inner.VR == "UI" and inner.value:
                        inner.value = self.uid(str(inner.value))

    def _shift_dates(self, dataset: Dataset, shift: datetime.timedelta) -> None:
        def move(_: Dataset, element: DataElement) -> None:
            if element.VR in ("DA", "DT") and element.value and not element.tag.is_private:
                element.value = _moved(str(element.value), shift)

        dataset.walk(move)

    def _record(self, dataset: Dataset) -> None:
        chosen = ["basic"]
        chosen += ["dates"] if self.options.shift_dates else []
        chosen += ["patient"] if self.options.retain_patient_characteristics else []
        chosen += ["device"] if self.options.retain_device_identity else []
        dataset.PatientIdentityRemoved = "YES"
        dataset.LongitudinalTemporalInformationModified = "MODIFIED" if self.options.shift_dates else "REMOVED"
        dataset.DeidentificationMethod = "PS3.15 E.1 Basic (trolleyfs, dicom-anonymizer 2026c)" + "".join(
            f" +{name}" for name in chosen[1:]
        )  # 64 characters at most (LO); the code sequence names each option in full
        codes = []
        for name in chosen:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _CODES[name][0], "DCM", _CODES[name][1]
            codes.append(code)
        dataset.DeidentificationMethodCodeSequence = Sequence(codes)


def _vr_of(tag: tuple[int, int]) -> str:
    try:
        return dictionary_VR((tag[0] << 16) | tag[1])
    except KeyError:
        return ""


def _moved(value: str, shift: datetime.timedelta) -> str:
    """A DA (or the date part of a DT) ``shift`` earlier; a value that is no date is emptied."""
    try:
        day = datetime.datetime.strptime(value[:8], "%Y%m%d").date() - shift
    except ValueError:
        return ""
    return day.strftime("%Y%m%d") + value[8:]


_library_uid = library.get_UID


def _nested_uid(old_uid: str) -> str:
    """The library's replacement of UIDs inside sequences it replaces: keyed, like ours, within
    Deidentifier.deidentify; the library's own (random) elsewhere."""
    deidentifier = getattr(_current, "deidentifier", None)
    return _library_uid(old_uid) if deidentifier is None else deidentifier.uid(old_uid)


library.get_UID = _nested_uid  # its default draws random UIDs, kept in a process-wide dict
