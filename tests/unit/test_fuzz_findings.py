"""The smallest inputs the fuzzers (tests/fuzz) found crashing a parser, one test each: every one
is now a clear error (a TrolleyError) or a sane result, never another exception."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.dataset import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pynetdicom.dsutils import decode

from trolleyfs.backends.dicom_json import record_from_dicom_json
from trolleyfs.backends.dimse import record_from_identifier
from trolleyfs.backends.mint import parse_study_search_results
from trolleyfs.backends.multipart import boundary_of
from trolleyfs.config import join_mount_options, load_config, parse_mount_options
from trolleyfs.errors import ConfigError, PacsProtocolError
from trolleyfs.fs.names import patient_dir_name
from trolleyfs.fs.sidecars import xattr_values
from trolleyfs.model import QueryLevel, build_studies

SOURCE = "http://127.0.0.1:8042/dicom-web"


def explicit_element(group: int, element: int, vr: str, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + vr.encode() + struct.pack("<H", len(value)) + value


def raw(tag: int, vr: str | None, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, vr is None, True, True, False)


def test_a_c_find_answer_with_a_badly_encoded_element_keeps_the_rest():
    rows_of_three_bytes = explicit_element(0x0028, 0x0010, "US", b"\x01\x02\x03")
    answer = decode(io.BytesIO(rows_of_three_bytes + explicit_element(0x0020, 0x000D, "UI", b"1.2.3\0")), False, True)
    assert record_from_identifier(answer) == {"StudyInstanceUID": "1.2.3"}


@pytest.mark.parametrize("odd", [raw(0xFFFEE00D, None, b""), raw(0x00080005, "US", b"\x01\x00")])
def test_a_c_find_answer_with_an_element_pydicom_cannot_convert_keeps_the_rest(odd):
    """An item delimiter at the top level; a SpecificCharacterSet that is no text."""
    elements = [odd, raw(0x00100010, "PN", b"A^B "), raw(0x0020000D, "UI", b"1.2.3\0")]
    dataset = Dataset({element.tag: element for element in elements})
    assert record_from_identifier(dataset)["StudyInstanceUID"] == "1.2.3"


def test_a_boundary_outside_rfc_2046_is_a_protocol_error():
    with pytest.raises(PacsProtocolError):
        boundary_of('multipart/related; boundary="\U000aaa27"')


def test_dicom_json_with_a_null_value_or_uids_that_are_no_text():
    assert record_from_dicom_json({"00200013": {"vr": "IS", "Value": None}}) == {"InstanceNumber": ""}
    with pytest.raises(PacsProtocolError):
        record_from_dicom_json({"00200013": {"vr": "IS", "Value": 7}})
    assert [s.uid for s in build_studies([{"StudyInstanceUID": {"x": 0}}, {"StudyInstanceUID": 12}], QueryLevel.STUDY)] == ["12"]


def test_a_mint_attr_with_a_negative_tag_is_a_protocol_error():
    body = (b'<s:studySearchResults xmlns:s="http://medical.nema.org/mint"><s:study><s:attr tag="-1" val=""/>'
            b"</s:study></s:studySearchResults>")
    with pytest.raises(PacsProtocolError):
        parse_study_search_results(body)


def test_lone_surrogates_from_json_name_folders_and_fill_xattrs():
    assert patient_dir_name("\ud800")
    assert xattr_values({"PatientName": "\ud800"})["user.dicom.PatientName"]


@pytest.mark.parametrize("options", [{"k": "\\,"}, {"k": " padded "}, {"k": "a=b\\c"}, {"k": "   "}])
def test_mount_options_survive_being_passed_on(options):
    assert parse_mount_options(join_mount_options(options)) == options


@pytest.mark.parametrize("content, cli", [
    (b"\x90", {}),  # a config file that is not UTF-8
    (b"credentials_file = {a = 1}\n", {}),  # a credentials_file that is a table
    (b"", {"min_free_space": "9" * 400}),  # a size past any float
])
def test_bad_config_is_a_config_error(tmp_path, content, cli):
    path = tmp_path / "trolleyfs.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        load_config({"source": SOURCE, "config": str(path), **cli}, environ={})


@pytest.mark.parametrize("tag", ["100000000", "-1", "0x10", " 0020000D", "0020000d\n", "ＦＦＦＦＦＦＦＦ"])
def test_a_dicom_json_tag_that_is_not_8_hex_digits_is_a_protocol_error(tag):
    with pytest.raises(PacsProtocolError):
        record_from_dicom_json({tag: {}})


def test_xml_in_an_encoding_python_does_not_know_is_a_protocol_error():
    body = b"<?xml version='1.0' encoding='tf-8'?>\n<studySearchResults xmlns=\"http://medical.nema.org/mint\" />"
    with pytest.raises(PacsProtocolError):
        parse_study_search_results(body)


def test_a_number_past_any_float_renders_as_text_in_study_json():
    import json

    from trolleyfs.fs.sidecars import dicom_json

    rendered = json.loads(json.dumps(dicom_json({"SeriesNumber": [float("inf")], "SliceThickness": "nan",
                                                 "InstanceNumber": "9" * 400}), allow_nan=False))
    assert rendered["00200011"]["Value"] == ["inf"]
    assert rendered["00200013"]["Value"] == [int("9" * 400)]  # a big integer is still a JSON number


def test_a_toml_integer_past_pythons_digit_limit_is_a_config_error(tmp_path):
    path = tmp_path / "trolleyfs.toml"
    path.write_text(f"cache_size = {'1' * 4301}\n")
    with pytest.raises(ConfigError):
        load_config({"source": SOURCE, "config": str(path)}, environ={})
