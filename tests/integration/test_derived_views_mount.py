"""The derived views through a real mount over a real Orthanc: /nifti against dcm2niix run on the
same files, preview.png rendered by Orthanc's WADO-RS /rendered, and /deid checked attribute by
attribute against the stored originals (and against dicom-anonymizer run on them directly)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import dcm2niix
import pydicom
import pytest
from dicomanonymizer import simpledicomanonymizer
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from PIL import Image

from tests.conftest import unavailable
from trolleyfs.derived.deid import TABLE
from trolleyfs.derived.nifti import OPTIONS
from trolleyfs.testing.data import DERIVED_PATIENT, SAMPLE_PATIENTS, SampleSpec, generate, generate_derived_samples
from trolleyfs.testing.orthanc import Orthanc, orthanc_missing

SECRET = "a test secret of /deid, 32 chars"
ADDED_BY_DEID = {"PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                 "LongitudinalTemporalInformationModified"}


@pytest.fixture(scope="module")
def pacs_files() -> list[bytes]:
    return [*generate(SampleSpec(patients=SAMPLE_PATIENTS[:1], studies_per_patient=1)), *generate_derived_samples()]


@pytest.fixture(scope="module")
def derived_orthanc(tmp_path_factory, pacs_files):
    if reason := orthanc_missing():
        unavailable(reason)
    server = Orthanc(tmp_path_factory.mktemp("orthanc-derived"))
    server.start()
    server.upload(pacs_files)
    yield server
    server.stop()


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(f'deid_secret = "{SECRET}"\n')
    path.chmod(0o600)
    return path


def originals(files: list[bytes]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(data)) for data in files]


def study_folder(mounted, tree: str, study_uid: str) -> Path:
    return mounted.path / tree / "studies" / study_uid


def series_folders(study: Path) -> dict[str, Path]:
    """Series folders of a study folder by their modality (the second part of the default name)."""
    return {path.name.split("_")[1]: path for path in sorted(study.iterdir()) if path.is_dir()}


def dcm2niix_of(files: list[bytes], work: Path) -> dict[str, bytes]:
    """dcm2niix with the mount's options over a local copy of ``files``."""
    (work / "in").mkdir(parents=True)
    (work / "out").mkdir()
    for index, data in enumerate(files):
        (work / "in" / f"{index}.dcm").write_bytes(data)
    subprocess.run([dcm2niix.bin, *OPTIONS, "-o", str(work / "out"), str(work / "in")], check=True, capture_output=True)
    return {path.name: path.read_bytes() for path in (work / "out").iterdir()}


def test_nifti_is_dcm2niix_of_the_same_files_converted_once_and_listing_converts_nothing(
    mount, derived_orthanc, pacs_files, tmp_path
):
    mounted = mount(derived_orthanc.dicomweb_url)
    sample = [ds for ds in originals(pacs_files) if ds.PatientID == SAMPLE_PATIENTS[0][0]]
    study_uid = sample[0].StudyInstanceUID
    study = study_folder(mounted, "nifti", study_uid)
    listing = subprocess.run(["ls", "-lR", str(study)], capture_output=True, text=True, check=True).stdout
    assert "series.nii" in listing and "series.json" in listing
    stats = mounted.stats()
    assert stats["instances_downloaded"] == 0 and stats["download_requests"] == 0
    assert stats["derived_files_made"] == 0
    estimated = {name: (path / "series.nii").stat().st_size for name, path in series_folders(study).items()}
    assert set(estimated) == {"CT", "MR"} and all(size > 0 for size in estimated.values())

    for modality, folder in series_folders(study).items():
        files = [data for data, ds in zip(pacs_files, originals(pacs_files)) if ds.StudyInstanceUID == study_uid
                 and ds.Modality == modality]
        expected = dcm2niix_of(files, tmp_path / modality)
        assert sorted(expected) == ["series.json", "series.nii"]
        assert (folder / "series.nii").read_bytes() == expected["series.nii"]
        assert (folder / "series.json").read_bytes() == expected["series.json"]
        assert (folder / "series.nii").stat().st_size == len(expected["series.nii"])  # the true size, once made
    before = mounted.stats()
    for folder in series_folders(study).values():
        (folder / "series.nii").read_bytes()
        (folder / "series.json").read_bytes()
    after = mounted.stats()
    assert after["instances_downloaded"] == before["instances_downloaded"]
    assert after["download_requests"] == before["download_requests"]
    assert after["derived_files_made"] == before["derived_files_made"]


def test_a_split_series_shows_each_volume_and_a_report_has_no_nifti_folder(mount, derived_orthanc, pacs_files, tmp_path):
    mounted = mount(derived_orthanc.dicomweb_url)
    derived = [(data, ds) for data, ds in zip(pacs_files, originals(pacs_files)) if ds.PatientID == DERIVED_PATIENT[0]]
    study = study_folder(mounted, "nifti", derived[0][1].StudyInstanceUID)
    folders = series_folders(study)
    assert "SR" not in folders and {"MR", "CT"} <= set(folders)  # decided from the search answer
    mr = folders["MR"]
    assert sorted(os.listdir(mr)) == ["preview.png", "series.json", "series.nii"]  # before: names fixed in advance
    expected = dcm2niix_of([data for data, ds in derived if ds.Modality == "MR"], tmp_path / "mr")
    volumes = sorted(name for name in expected if name.endswith(".nii"))
    assert len(volumes) == 2, volumes  # two echoes
    assert (mr / "series.nii").read_bytes() == expected[volumes[0]]
    shown = sorted(os.listdir(mr))
    assert volumes[1] in shown and volumes[1].replace(".nii", ".json") in shown
    assert (mr / volumes[1]).read_bytes() == expected[volumes[1]]


def test_previews_are_pngs_of_the_documented_size_rendered_by_orthanc_without_downloads(mount, derived_orthanc, pacs_files):
    mounted = mount(derived_orthanc.dicomweb_url, preview_size=128)
    study_uid = originals(pacs_files)[0].StudyInstanceUID
    study = mounted.path / "studies" / study_uid
    for folder in (path for path in study.iterdir() if path.is_dir()):
        with Image.open(folder / "preview.png") as image:
            assert image.format == "PNG" and max(image.size) == 128
    with Image.open(study / "preview.png") as montage:
        assert montage.format == "PNG" and montage.size == (128, 128)
        assert montage.getextrema() != ((0, 0), (0, 0), (0, 0))  # the series are drawn on it
    stats = mounted.stats()
    assert stats["renders"] >= 2
    assert stats["instances_downloaded"] == 0 and stats["download_requests"] == 0


def profile_tags() -> set[int]:
    tables = dicom_anonymization_database_selector(TABLE)
    return {(group << 16) | element for category, tags in tables.items() if category != "ALL_TAGS"
            for group, element, *_ in tags if not _}


def test_deid_leaves_no_identifying_value_in_any_file_or_name(mount, derived_orthanc, pacs_files, credentials, tmp_path):
    mounted = mount(derived_orthanc.dicomweb_url, credentials_file=credentials)
    stored = originals(pacs_files)
    by_pixels = {ds.PixelData: ds for ds in stored if "PixelData" in ds}
    identifying = profile_tags()
    names = [path for path in (mounted.path / "deid").rglob("*")]
    forbidden = {value for ds in stored for value in (
        ds.PatientID, str(ds.PatientName), *str(ds.PatientName).split("^"), ds.AccessionNumber, ds.StudyDate,
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.get("StudyDescription", ""),
    ) if value}
    leaks_in_names = [(path.name, value) for path in names for value in forbidden if value in path.name]
    uid_map: dict[str, set[str]] = {}
    refused, checked, leaks = [], 0, []
    report: dict[str, int] = {}
    for path in (p for p in names if p.suffix == ".dcm"):
        assert os.listxattr(path) == []
        try:
            data = path.read_bytes()
        except PermissionError as exc:
            assert exc.errno == errno.EACCES
            refused.append(path)
            continue
        ds = pydicom.dcmread(io.BytesIO(data))
        original = by_pixels.get(ds.get("PixelData")) if "PixelData" in ds else next(
            o for o in stored if o.Modality == "SR")
        assert original is not None, "pixel data changed"
        assert [e.tag for e in ds if e.tag.is_private] == []
        assert ds.PatientIdentityRemoved == "YES" and "PS3.15" in ds.DeidentificationMethod
        for element in original.iterall():
            if element.tag.is_private or element.tag not in identifying or element.VR == "SQ" or not element.value:
                continue
            report[element.keyword or str(element.tag)] = report.get(element.keyword or str(element.tag), 0) + 1
            kept = ds.get(element.tag)
            if kept is not None and kept.value == element.value:
                leaks.append((path.name, element.keyword))
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            uid_map.setdefault(original.get(keyword), set()).add(ds.get(keyword))
        checked += 1
    (tmp_path / "deid-report.json").write_text(json.dumps({"files": checked, "refused": len(refused),
                                                          "attributes": report, "leaks": leaks}, indent=1))
    print(json.dumps({"files": checked, "refused": len(refused), "attributes": sorted(report), "leaks": leaks}))
    assert leaks == [] and leaks_in_names == []
    views = 2  # /deid/patients and /deid/studies show every file
    assert checked == views * (len(stored) - 2)  # all but the flagged CT image and the ultrasound image
    assert sorted(p.parent.name.split("_")[1] for p in refused) == ["CT", "CT", "US", "US"]
    log = mounted.log_text()
    assert "BurnedInAnnotation=YES" in log and "its modality often holds burned-in text" in log
    assert all(len(new) == 1 for new in uid_map.values()), "one UID became several"
    assert len({next(iter(new)) for new in uid_map.values()}) == len(uid_map), "two UIDs became one"


def test_deid_agrees_with_the_library_run_directly_and_dcm2niix_converts_it(mount, derived_orthanc, pacs_files, credentials, tmp_path):
    mounted = mount(derived_orthanc.dicomweb_url, credentials_file=credentials)
    sample = [(data, ds) for data, ds in zip(pacs_files, originals(pacs_files)) if ds.PatientID == SAMPLE_PATIENTS[0][0]]
    patient = next((mounted.path / "deid" / "patients").iterdir())
    ct = next(path for path in next(patient.iterdir()).iterdir() if "_CT_" in path.name)
    served = {pydicom.dcmread(path).PixelData: pydicom.dcmread(path) for path in sorted(ct.iterdir())}
    for _, original in sample:
        if original.PixelData not in served:
            continue
        ours = served[original.PixelData]
        theirs = original.copy()
        simpledicomanonymizer.anonymize_dataset(theirs, delete_private_tags=True,
                                                base_rules_gen=lambda: simpledicomanonymizer.initialize_actions(TABLE))
        assert {e.keyword for e in ours} - ADDED_BY_DEID == {e.keyword for e in theirs}
        for element in theirs:
            if element.VR not in ("UI", "SQ") and element.keyword not in ("PatientID", "PatientName"):
                assert ours[element.tag].value == element.value, element.keyword
    assert len({ds.SeriesInstanceUID for ds in served.values()}) == 1
    copy = tmp_path / "deid-ct"
    shutil.copytree(ct, copy)
    (tmp_path / "out").mkdir()
    done = subprocess.run([dcm2niix.bin, *OPTIONS, "-o", str(tmp_path / "out"), str(copy)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "out" / "series.nii").stat().st_size > 0
    first_names = sorted(str(p.relative_to(mounted.path)) for p in (mounted.path / "deid").rglob("*"))
    assert mounted.unmount() == 0
    again = mount(derived_orthanc.dicomweb_url, credentials_file=credentials)
    assert sorted(str(p.relative_to(again.path)) for p in (again.path / "deid").rglob("*")) == first_names


def test_no_secret_no_deid(mount, derived_orthanc):
    mounted = mount(derived_orthanc.dicomweb_url)
    assert "deid" not in os.listdir(mounted.path)
    with pytest.raises(FileNotFoundError):
        os.stat(mounted.path / "deid")
