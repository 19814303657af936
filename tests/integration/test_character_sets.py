"""SpecificCharacterSet: names in Latin-1, UTF-8 and Japanese (ISO 2022 IR 87) read right in
folder names, study.json and xattrs, from a C-FIND peer that answers in the character set it
stores (not the one asked in), through a real mount."""

from __future__ import annotations

import io
import json
import os

import pydicom
import pytest

from tests.dimse_peer import FakeDimsePeer
from trolleyfs.testing.data import SampleSpec, generate

CASES = {
    "ISO_IR 100": ("ISO_IR 100", "MÜLLER^JÖRG", "Schädel nativ"),
    "ISO_IR 192": ("ISO_IR 192", "STRAßE^Ünal", "頭部 CT"),
    "ISO 2022 IR 87": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "頭部"),  # PS3.5 H.3.1
}


def files_in(charset, name: str, description: str) -> list[bytes]:
    spec = SampleSpec(patients=(("CS-1", "PLAIN^NAME"),), studies_per_patient=1, series_per_study=1,
                      instances_per_series=2, seed="trolleyfs-charsets")
    files = []
    for data in generate(spec):
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.SpecificCharacterSet = charset
        dataset.PatientName = name
        dataset.StudyDescription = description
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


@pytest.mark.parametrize("case", list(CASES))
def test_names_json_and_xattrs_decode_the_answers_character_set(mount, case):
    charset, name, description = CASES[case]
    with FakeDimsePeer(files_in(charset, name, description)) as peer:
        mounted = mount(peer.url)
        (study,) = (mounted.patients / "CS-1").iterdir()
        assert description in study.name  # the description keeps its letters
        sidecar = json.loads((study / "study.json").read_text(encoding="utf-8"))
        groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("=")))
        assert sidecar["00100010"]["Value"][0] == groups
        assert os.getxattr(study, "user.dicom.PatientName").decode("utf-8") == name
        assert os.getxattr(study, "user.dicom.StudyDescription").decode("utf-8") == description


def test_a_dicom_json_person_name_keeps_its_ideographic_and_phonetic_groups():
    from trolleyfs.backends.dicom_json import record_from_dicom_json

    def name_of(value: dict) -> str:
        return record_from_dicom_json({"00100010": {"vr": "PN", "Value": [value]}})["PatientName"]

    assert name_of({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}) == \
        "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert name_of({"Ideographic": "山田^太郎"}) == "=山田^太郎"  # no Alphabetic group: not lost
    assert name_of({"Alphabetic": "DOE^JOHN"}) == "DOE^JOHN"
