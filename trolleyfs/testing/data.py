"""Generated sample studies, made from pydicom's bundled CT and MR templates.

Everything is derived from a seed, so the same spec always gives byte-identical files (the same
UIDs, names and pixels): uploading them twice is idempotent.
"""

from __future__ import annotations

import copy
import datetime
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SAMPLE_PATIENTS = (("TROLLEY-001", "DOE^JOHN"), ("TROLLEY-002", "ROE^JANE"), ("TROLLEY-003", "POE^EDGAR"))
_MODALITIES = ("CT", "MR")
_BASE_DATE = datetime.date(2024, 1, 15)


@dataclass(frozen=True)
class SampleSpec:
    patients: tuple[tuple[str, str], ...] = SAMPLE_PATIENTS[:2]
    """(PatientID, PatientName) pairs."""
    studies_per_patient: int = 2
    series_per_study: int = 2
    """Series alternate CT, MR, CT, ..."""
    instances_per_series: int = 10
    rows: int = 64
    columns: int = 64
    seed: str = "trolleyfs-sample"
    study_descriptions: tuple[str, ...] = field(default=("CHEST CT", "BRAIN MR"))


@cache
def _template(modality: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm" if modality == "CT" else "MR_small.dcm"))


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def generate(spec: SampleSpec = SampleSpec()) -> Iterator[bytes]:
    """Part-10 files for every instance the spec describes, patient by patient."""
    for p, (patient_id, patient_name) in enumerate(spec.patients):
        for s in range(spec.studies_per_patient):
            study_uid = _uid(spec.seed, patient_id, s)
            study_date = _BASE_DATE + datetime.timedelta(days=30 * s + p)
            description = spec.study_descriptions[s % len(spec.study_descriptions)]
            for e in range(spec.series_per_study):
                modality = _MODALITIES[e % len(_MODALITIES)]
                series_uid = _uid(spec.seed, study_uid, e)
                for i in range(spec.instances_per_series):
                    ds = copy.deepcopy(_template(modality))
                    ds.PatientID, ds.PatientName = patient_id, patient_name
                    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                    ds.SOPInstanceUID = _uid(spec.seed, series_uid, i)
                    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
                    ds.StudyDescription = description
                    ds.SeriesDescription = f"{modality} series {e + 1}"
                    ds.AccessionNumber = f"ACC{p:02d}{s:02d}"
                    ds.StudyID = str(s + 1)
                    ds.Modality = modality
                    ds.SeriesNumber, ds.InstanceNumber = e + 1, i + 1
                    ds.ImagePositionPatient = [0.0, 0.0, float(i)]
                    _set_pixels(ds, spec, f"{spec.seed}/{ds.SOPInstanceUID}")
                    yield _part10(ds)


def _set_pixels(ds: Dataset, spec: SampleSpec, seed: str) -> None:
    rng = np.random.default_rng(list(seed.encode()))
    pixels = rng.integers(-1000, 2000, size=(spec.rows, spec.columns), dtype=np.int16)
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"


def _part10(ds: Dataset) -> bytes:
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


DERIVED_PATIENT = ("TROLLEY-DER", "DERIVED^DORA")


def generate_derived_samples(seed: str = "trolleyfs-derived") -> Iterator[bytes]:
    """One study with the series the derived views treat apart: a two-echo MR series (dcm2niix
    writes one volume per echo), a structured report (no image), an ultrasound image (a modality
    refused by /deid unless checked) and a CT series whose last image is flagged
    BurnedInAnnotation=YES; every image carries a private element holding the patient's name."""
    patient_id, patient_name = DERIVED_PATIENT
    study_uid = _uid(seed, "study")
    spec = SampleSpec(rows=32, columns=32)

    def image(modality: str, series: int, number: int, **values: object) -> Dataset:
        ds = copy.deepcopy(_template("MR" if modality == "MR" else "CT"))
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient_id, patient_name, "19700101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, _uid(seed, "series", series)
        ds.SOPInstanceUID = _uid(seed, series, number)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240301"
        ds.StudyDescription, ds.SeriesDescription = "DERIVED VIEWS", f"{modality} {series}"
        ds.AccessionNumber, ds.Modality = "ACCDER", modality
        ds.SeriesNumber, ds.InstanceNumber = series, number
        ds.private_block(0x0009, "TROLLEYFS SAMPLE", create=True).add_new(0x01, "LO", patient_name)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        _set_pixels(ds, spec, f"{seed}/{ds.SOPInstanceUID}")
        return ds

    for echo in (1, 2):
        for slice_index in range(4):
            yield _part10(image(
                "MR", 1, (echo - 1) * 4 + slice_index + 1, EchoNumbers=echo, EchoTime=10.0 * echo,
                ImagePositionPatient=[0.0, 0.0, float(slice_index)],
            ))
    for number in range(1, 4):
        flagged = "YES" if number == 3 else "NO"
        yield _part10(image("CT", 2, number, BurnedInAnnotation=flagged, ImagePositionPatient=[0.0, 0.0, float(number)]))
    ultrasound = image("US", 3, 1)
    ultrasound.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    yield _part10(ultrasound)
    yield _part10(_report(patient_id, patient_name, study_uid, _uid(seed, "series", 4), _uid(seed, 4, 1)))


def _report(patient_id: str, patient_name: str, study_uid: str, series_uid: str, uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, patient_name, "SR"
    ds.StudyDate = ds.ContentDate = "20240301"
    ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = 4, 1, "ACCDER"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    return ds
