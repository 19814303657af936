"""The views through a real kernel mount: over a real Orthanc (QIDO-RS and C-FIND, ground truth
from Orthanc's REST API and its own QIDO-RS answers) and over MINT (the embedded PACS)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import backends_for, need_tool
from trolleyfs.fs.names import patient_dir_name
from trolleyfs.testing.pacs import EmbeddedPacs

VIEW_BACKENDS = ["qido+wado-rs", "cfind+cget"]


def uid_of(path: Path) -> str:
    return path.name.removesuffix(".dcm").rsplit("_", 1)[-1]


def instances_below(folder: Path) -> set[str]:
    return {uid_of(path) for path in folder.rglob("*.dcm")}


def expected(instances: list[dict], keep) -> set[str]:  # noqa: ANN001
    return {i["SOPInstanceUID"] for i in instances if keep(i)}


def check_views(mounted, instances: list[dict], study_modalities: dict[str, set[str]]) -> None:  # noqa: ANN001
    """Each view lists exactly the instances of the studies it names (several of each kind)."""
    root = mounted.path
    assert sorted(p.name for p in root.iterdir()) == [".trolleyfs", "accession", "dates", "nifti", "patients", "query", "studies"]
    assert list((root / "accession").iterdir()) == []
    for accession in sorted({i["AccessionNumber"] for i in instances}):
        assert instances_below(root / "accession" / accession) == expected(
            instances, lambda i: i["AccessionNumber"] == accession), accession
    for date in sorted({i["StudyDate"] for i in instances}):
        day = root / "dates" / date[:4] / date[4:6] / date[6:]
        assert instances_below(day) == expected(instances, lambda i: i["StudyDate"] == date), date
    for study_uid in sorted({i["StudyInstanceUID"] for i in instances})[:3]:
        assert instances_below(root / "studies" / study_uid) == expected(
            instances, lambda i: i["StudyInstanceUID"] == study_uid)
    doe_ct = root / "query" / "PatientName=DOE*&ModalitiesInStudy=CT"
    assert instances_below(doe_ct) == expected(
        instances, lambda i: i["PatientName"].startswith("DOE") and "CT" in study_modalities[i["StudyInstanceUID"]])
    january = root / "query" / "StudyDate=20240101-20240131&PatientID=TROLLEY-00?"
    assert instances_below(january) == expected(
        instances, lambda i: "20240101" <= i["StudyDate"] <= "20240131" and i["PatientID"].startswith("TROLLEY-00"))
    assert len([p for p in (root / "query" / "StudyDate=20240101-&limit=1").iterdir()]) == 1
    for bad in ("Foo=1", "StudyDate=2024", "PatientName="):
        with pytest.raises(OSError) as raised:
            os.listdir(root / "query" / bad)
        assert raised.value.errno == errno.EINVAL
    assert (root / "query" / "README.txt").read_text().startswith("Query folders")


def modalities_of(instances: list[dict]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for i in instances:
        found.setdefault(i["StudyInstanceUID"], set()).add(i["Modality"])
    return found


@pytest.mark.parametrize("backend_name", VIEW_BACKENDS)
def test_every_view_lists_what_orthanc_holds_without_downloading(mount, orthanc, orthanc_instances, backend_name):
    backend = backends_for(orthanc)[backend_name]
    mounted = mount(backend.source, **backend.options)
    study_uid = orthanc_instances[0]["StudyInstanceUID"]
    os.listdir(mounted.path / "studies" / study_uid)
    stats = mounted.stats()
    assert stats["searches"] <= 2 and stats["download_requests"] == 0
    check_views(mounted, orthanc_instances, modalities_of(orthanc_instances))
    subprocess.run(["ls", "-lR", str(mounted.path / "dates" / "2024" / "01")], check=True, capture_output=True)
    assert mounted.stats()["download_requests"] == 0


@pytest.mark.parametrize("backend_name", VIEW_BACKENDS)
def test_an_instance_read_through_two_views_is_downloaded_once(mount, orthanc, orthanc_instances, backend_name):
    backend = backends_for(orthanc)[backend_name]
    mounted = mount(backend.source, readahead_max=0, **backend.options)
    instance = orthanc_instances[0]
    by_uid = [p for p in (mounted.path / "studies" / instance["StudyInstanceUID"]).rglob("*.dcm")
              if uid_of(p) == instance["SOPInstanceUID"]]
    by_patient = [p for p in (mounted.patients / patient_dir_name(instance["PatientID"])).rglob("*.dcm")
                  if uid_of(p) == instance["SOPInstanceUID"]]
    first, second = by_uid[0].read_bytes(), by_patient[0].read_bytes()
    assert first == second and first[128:132] == b"DICM"
    if backend.exact_bytes:
        assert first == orthanc.file(instance["id"])
    assert mounted.stats()["download_requests"] == 1


def test_study_json_is_what_qido_rs_returns_and_tags_are_xattrs(mount, orthanc, orthanc_instances):
    getfattr = need_tool("getfattr")
    mounted = mount(orthanc.dicomweb_url, readahead_max=0)
    instance = orthanc_instances[0]
    study = mounted.path / "studies" / instance["StudyInstanceUID"]
    checked = subprocess.run([sys.executable, "-c", "import json,sys; json.load(open(sys.argv[1]))",
                              str(study / "study.json")], capture_output=True)
    assert checked.returncode == 0, checked.stderr
    ours = json.loads((study / "study.json").read_bytes())
    assert (study / "study.json").stat().st_size == len((study / "study.json").read_bytes())
    asked = [("StudyInstanceUID", instance["StudyInstanceUID"]), *(("includefield", tag) for tag in ours)]
    (theirs,) = httpx.get(f"{orthanc.dicomweb_url}/studies", params=asked).json()
    assert {tag: element for tag, element in ours.items()} == {tag: theirs[tag] for tag in ours}
    assert {"00100020", "00100010", "0020000D", "00080020", "00080050"} <= set(ours)
    series = next(p for p in study.iterdir() if p.name.endswith(instance["SeriesInstanceUID"]))
    document = json.loads((series / "series.json").read_bytes())
    assert {i["00080018"]["Value"][0] for i in document["instances"]} == {
        i["SOPInstanceUID"] for i in orthanc_instances if i["SeriesInstanceUID"] == instance["SeriesInstanceUID"]}
    printed = subprocess.run([getfattr, "-n", "user.dicom.PatientID", "--only-values", str(study)],
                             capture_output=True, text=True, check=True).stdout
    assert printed == instance["PatientID"]
    dump = subprocess.run([getfattr, "-d", str(series)], capture_output=True, text=True, check=True).stdout
    assert "user.dicom.Modality=" in dump and "user.dicom.SeriesInstanceUID=" in dump
    with pytest.raises(OSError) as raised:
        os.getxattr(study, "user.dicom.NoSuchKeyword")
    assert raised.value.errno == errno.ENODATA
    with pytest.raises(OSError) as raised:
        os.setxattr(study, "user.dicom.PatientID", b"x")
    assert raised.value.errno == errno.EROFS
    assert mounted.stats()["download_requests"] == 0  # none of it downloaded an instance
    file = next(series.glob("*.dcm"))
    assert b"user.dicom.Manufacturer" not in b"".join(n.encode() for n in os.listxattr(file))
    file.read_bytes()
    assert os.getxattr(file, "user.dicom.Manufacturer")  # the header, once cached


def test_mint_serves_every_view(mount, sample_files):
    with EmbeddedPacs(sample_files) as pacs:
        mounted = mount(pacs.dicomweb_url, searcher="mint", mint_url=f"{pacs.base_url}/mint")
        instances = [{"SOPInstanceUID": uid, **{k: i.value(k) for k in (
            "PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyInstanceUID", "Modality")}}
            for uid, i in pacs.instances.items()]
        check_views(mounted, instances, modalities_of(instances))
        assert pacs.count("qido") == 0 and pacs.count("wado-rs") == 0
