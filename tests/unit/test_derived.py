"""The derived files of the filesystem core over the embedded PACS (real HTTP on 127.0.0.1, no
FUSE): previews (the embedded PACS does not render: the middle instance is downloaded), NIfTI
conversions (cached, surviving a restart, failing with dcm2niix's reason) and /deid (consistent
pseudonyms, options, refusals, no way in by an original value)."""

from __future__ import annotations

import copy
import errno
import io
import logging

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.unit.helpers import filesystem_over, listdir, read_all, walk
from trolleyfs.derived.deid import BurnedInText, DeidOptions, Deidentifier
from trolleyfs.derived.images import thumbnail_of_dataset
from trolleyfs.errors import TrolleyError
from trolleyfs.fs.previews import middle_instance
from trolleyfs.model import Instance
from trolleyfs.testing.data import DERIVED_PATIENT, SampleSpec, generate, generate_derived_samples
from trolleyfs.testing.pacs import EmbeddedPacs

SECRET = "unit-test secret of sixteen+"


@pytest.fixture
def derived_pacs():
    with EmbeddedPacs([*generate(SampleSpec(patients=(("P1", "ONE^PATIENT"),), studies_per_patient=1)),
                       *generate_derived_samples()]) as server:
        yield server


@pytest.fixture
def credentials(tmp_path):
    path = tmp_path / "credentials.toml"
    path.write_text(f'deid_secret = "{SECRET}"\n')
    path.chmod(0o600)
    return str(path)


def sample(modality: str = "CT") -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(next(data for data in generate(SampleSpec())
                                           if pydicom.dcmread(io.BytesIO(data)).Modality == modality)))


async def study_of(fs, view: str):
    (study,) = [node for node in (await listdir(fs, (await walk(fs, view)).inode)).values()]
    return study


def test_the_middle_instance_is_chosen_by_instance_number_not_by_listing_order():
    instances = [Instance(uid=f"1.{n}", parent=None, attributes={"InstanceNumber": n}) for n in (5, 1, 4, 2, 3)]
    assert middle_instance(instances).uid == "1.3"
    assert middle_instance([*instances, Instance(uid="1.9", parent=None, attributes={})]).uid == "1.3"


def test_a_thumbnail_is_windowed_by_the_files_own_window_or_by_percentiles():
    ds = sample()
    values = np.zeros((ds.Rows, ds.Columns), dtype=np.int16)
    values[:, : ds.Columns // 2] = 40
    values[:, ds.Columns // 2 :] = 400
    ds.PixelData, ds.RescaleSlope, ds.RescaleIntercept = values.tobytes(), 1, 0
    ds.WindowCenter, ds.WindowWidth = 40, 80  # 40 is mid-grey, 400 far above: white
    with Image.open(io.BytesIO(thumbnail_of_dataset(ds, 32))) as image:
        assert image.size == (32, 32)
        left, right = image.getpixel((2, 16)), image.getpixel((29, 16))
    assert 120 <= left <= 135 and right == 255
    del ds.WindowCenter, ds.WindowWidth  # percentiles: the low half black, the high half white
    with Image.open(io.BytesIO(thumbnail_of_dataset(ds, 32))) as image:
        assert image.getpixel((2, 16)) == 0 and image.getpixel((29, 16)) == 255


async def test_a_series_preview_downloads_its_middle_instance_once_and_then_nothing(derived_pacs, tmp_path):
    async with filesystem_over(derived_pacs, tmp_path, preview_size=64) as fs:
        study = await study_of(fs, "/patients/P1")
        series = next(node for node in (await listdir(fs, study.inode)).values() if node.is_dir)
        preview = (await listdir(fs, series.inode))["preview.png"]
        assert fs.stats()["instances_downloaded"] == 0 and preview.size == 64 * 64  # an estimate
        with Image.open(io.BytesIO(await read_all(fs, preview.inode))) as image:
            assert image.format == "PNG" and image.size == (64, 64)
        assert fs.stats()["instances_downloaded"] == 1
        assert fs.stats()["download_requests"] == 1  # that one instance, no read-ahead of its series
        await read_all(fs, preview.inode)
        assert fs.stats()["instances_downloaded"] == 1 and fs.stats()["derived_files_made"] == 1


async def test_a_conversion_is_kept_in_the_cache_across_a_restart(derived_pacs, tmp_path):
    async with filesystem_over(derived_pacs, tmp_path) as fs:
        study = await study_of(fs, "/nifti/patients/P1")
        series = next(node for node in (await listdir(fs, study.inode)).values() if node.is_dir)
        first = await read_all(fs, (await listdir(fs, series.inode))["series.nii"].inode)
        assert fs.stats()["derived_files_made"] >= 3  # series.nii, series.json, their manifest
    downloads = derived_pacs.count("wado-rs")
    async with filesystem_over(derived_pacs, tmp_path) as fs:
        study = await study_of(fs, "/nifti/patients/P1")
        series = next(node for node in (await listdir(fs, study.inode)).values() if node.is_dir)
        entries = await listdir(fs, series.inode)
        assert entries["series.nii"].size == len(first) and entries["series.nii"].size_exact
        assert await read_all(fs, entries["series.nii"].inode) == first
        assert fs.stats()["derived_files_made"] == 0 and derived_pacs.count("wado-rs") == downloads


async def test_a_series_dcm2niix_cannot_convert_is_eio_with_its_reason_in_the_log(derived_pacs, tmp_path, caplog):
    report = next(pydicom.dcmread(io.BytesIO(d)) for d in generate_derived_samples()
                  if pydicom.dcmread(io.BytesIO(d)).Modality == "SR")
    report.Modality = "CT"  # a series the search calls images, holding none
    report.SeriesInstanceUID = report.SOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.save_as(buffer, enforce_file_format=True)
    derived_pacs.add(buffer.getvalue())
    async with filesystem_over(derived_pacs, tmp_path) as fs:
        study = await study_of(fs, f"/nifti/patients/{DERIVED_PATIENT[0]}")
        folder = next(node for node in (await listdir(fs, study.inode)).values()
                      if node.is_dir and node.series.uid == report.SeriesInstanceUID)
        nii = (await listdir(fs, folder.inode))["series.nii"]
        with caplog.at_level(logging.WARNING, logger="trolleyfs"):
            with pytest.raises(TrolleyError) as raised:
                await read_all(fs, nii.inode)
        assert raised.value.errno == errno.EIO
        assert "dcm2niix" in caplog.text and "No valid DICOM" in caplog.text
        assert DERIVED_PATIENT[1].split("^")[0] not in caplog.text and "/scratch" not in caplog.text


def test_pseudonyms_are_keyed_by_the_secret_and_dates_keep_their_intervals():
    one, same, other = Deidentifier(SECRET), Deidentifier(SECRET), Deidentifier(SECRET + "!")
    assert one.uid("1.2.3") == same.uid("1.2.3") != other.uid("1.2.3")
    assert one.pseudonym("P1") == same.pseudonym("P1") != one.pseudonym("P2")
    assert len(one.uid("1." * 31 + "1")) <= 64 and pydicom.uid.UID(one.uid("1.2.3")).is_valid
    shifting = Deidentifier(SECRET, DeidOptions(shift_dates=True))
    early, late = sample(), sample()
    early.StudyDate, late.StudyDate = "20240101", "20240131"
    moved = [pydicom.dcmread(io.BytesIO(shifting.deidentify(_bytes(ds)))) for ds in (early, late)]
    days = [pydicom.valuerep.DA(ds.StudyDate) for ds in moved]
    assert (days[1] - days[0]).days == 30 and moved[0].StudyDate != "20240101"
    assert moved[0].LongitudinalTemporalInformationModified == "MODIFIED"
    assert {c.CodeValue for c in moved[0].DeidentificationMethodCodeSequence} == {"113100", "113107"}


def test_options_keep_what_they_name_and_checked_modalities_are_served():
    ds = sample()
    ds.StationName, ds.PatientSex = "SCANNER7", "F"
    plain = pydicom.dcmread(io.BytesIO(Deidentifier(SECRET).deidentify(_bytes(ds))))
    assert plain.get("StationName") in (None, "", "ANONYMIZED") and plain.get("PatientSex") in (None, "")
    keeping = Deidentifier(SECRET, DeidOptions(retain_device_identity=True, retain_patient_characteristics=True))
    kept = pydicom.dcmread(io.BytesIO(keeping.deidentify(_bytes(ds))))
    assert kept.StationName == "SCANNER7" and kept.PatientSex == "F"
    ultrasound = copy.deepcopy(ds)
    ultrasound.Modality = "US"
    with pytest.raises(BurnedInText) as refused:
        Deidentifier(SECRET).deidentify(_bytes(ultrasound))
    assert refused.value.errno == errno.EACCES
    Deidentifier(SECRET, DeidOptions(burned_in_checked=("US",))).deidentify(_bytes(ultrasound))
    ultrasound.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInText):
        Deidentifier(SECRET, DeidOptions(burned_in_checked=("US",))).deidentify(_bytes(ultrasound))


async def test_deid_names_hide_the_originals_and_no_original_value_opens_a_folder(derived_pacs, tmp_path, credentials):
    async with filesystem_over(derived_pacs, tmp_path, credentials_file=credentials) as fs:
        patients = await listdir(fs, (await walk(fs, "/deid/patients")).inode)
        assert all(name.startswith("ANON-") for name in patients) and len(patients) == 2
        study_uid = next(iter(derived_pacs.instances.values())).value("StudyInstanceUID")
        for path in ("/deid/patients/P1", f"/deid/studies/{study_uid}"):
            with pytest.raises(TrolleyError) as missing:
                await walk(fs, path)
            assert missing.value.errno == errno.ENOENT
        studies = await listdir(fs, (await walk(fs, "/deid/studies")).inode)
        assert study_uid not in studies and all(name.startswith("2.25.") for name in studies)
        study = next(iter(studies.values()))
        assert await fs.listxattr(study.inode) == []
        assert all(node.is_dir for node in (await listdir(fs, study.inode)).values())  # no sidecars, no previews


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


async def test_opening_a_deid_file_reads_its_series_ahead_like_an_original(derived_pacs, tmp_path, credentials):
    async with filesystem_over(derived_pacs, tmp_path, credentials_file=credentials) as fs:
        folders = []
        for patient in (await listdir(fs, (await walk(fs, "/deid/patients")).inode)).values():
            for study in (await listdir(fs, patient.inode)).values():
                folders += (await listdir(fs, study.inode)).values()
        ten = [folder for folder in folders if len(await listdir(fs, folder.inode)) == 10]  # P1's CT and MR
        files = list((await listdir(fs, ten[0].inode)).values())
        await read_all(fs, files[0].inode)
        await fs.trolley.settled()
        assert fs.stats()["read_aheads"] == 1
        requests = fs.stats()["download_requests"]
        for file in files[1:]:
            await read_all(fs, file.inode)
        assert fs.stats()["download_requests"] == requests  # the rest came with the read-ahead
