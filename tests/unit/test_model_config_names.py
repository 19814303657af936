"""Query validation, configuration precedence, naming rules and URL building."""

from __future__ import annotations

import datetime

import pytest
from pydantic import ValidationError

from trolleyfs.backends.http import build_url
from trolleyfs.config import load_config, parse_size
from trolleyfs.errors import ConfigError
from trolleyfs.fs.settings import Naming
from trolleyfs.fs.names import NameTemplate, patient_dir_name, patient_id_from_name, unique_names
from trolleyfs.fs.sidecars import header_attributes
from trolleyfs.model import Query, QueryLevel, build_studies

SOURCE = "http://127.0.0.1:8042/dicom-web"


def test_query_rejects_unknown_fields_and_keywords():
    with pytest.raises(ValidationError, match="PatientNmae"):
        Query(PatientNmae="DOE*")
    with pytest.raises(ValidationError, match="NotAKeyword"):
        Query(include_fields=["StudyDescription", "NotAKeyword"])
    with pytest.raises(ValidationError, match="after"):
        Query(min_study_date=datetime.date(2024, 2, 1), max_study_date=datetime.date(2024, 1, 1))


def test_query_matching_keys_pass_wildcards_and_date_ranges():
    query = Query(PatientName="DOE*", min_study_date=datetime.date(2024, 3, 1), query_level="SERIES")
    assert query.matching_keys() == {"PatientName": "DOE*", "StudyDate": "20240301-"}
    assert query.query_level is QueryLevel.SERIES


def test_build_studies_links_children_to_parents():
    records = [
        {"StudyInstanceUID": "1", "SeriesInstanceUID": "1.1", "SOPInstanceUID": "1.1.1", "PatientID": "P",
         "Modality": "CT", "InstanceNumber": 1},
        {"StudyInstanceUID": "1", "SeriesInstanceUID": "1.1", "SOPInstanceUID": "1.1.2"},
    ]
    (study,) = build_studies(records, QueryLevel.INSTANCE)
    (series,) = study.series
    assert [i.uid for i in series.instances] == ["1.1.1", "1.1.2"]
    assert series.instances[0].parent is series and series.parent is study
    assert study.attributes["PatientID"] == "P" and series.attributes["Modality"] == "CT"
    assert series.instances[1].reference.series_uid == "1.1"


def test_sizes_parse_with_units():
    assert parse_size("2G") == 2 * 1024**3
    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("1.5K") == 1536
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_config_precedence_is_cli_then_file_then_environment(tmp_path):
    toml = tmp_path / "trolleyfs.toml"
    toml.write_text('timeout = 7.0\ncache_size = "1G"\nretries = 5\n')
    environ = {"TROLLEYFS_TIMEOUT": "3", "TROLLEYFS_RETRIES": "1", "TROLLEYFS_LISTING_TTL": "9"}
    config = load_config({"source": SOURCE, "config": str(toml), "retries": "4"}, environ)
    assert config.retries == 4  # command line wins
    assert config.timeout == 7.0  # file beats environment
    assert config.cache_size == 1024**3
    assert config.listing_ttl == 9  # environment beats the default


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="bogus"):
        load_config({"source": SOURCE, "bogus": "1"}, {})
    with pytest.raises(ConfigError, match="wado_uri_url"):
        load_config({"source": SOURCE, "downloader": "wado-uri"}, {})
    with pytest.raises(ConfigError, match="source"):
        load_config({"source": "ftp://x"}, {})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({"source": SOURCE, "config": "/nonexistent.toml"}, {})


@pytest.mark.parametrize("pid", ["P1", "A/B", "..", ".", "", "x\0y", "%41", "a b*?\\", "ü/ñ", ".git", "~user"])
def test_patient_names_are_safe_and_reversible(pid):
    name = patient_dir_name(pid)
    assert "/" not in name and "\0" not in name and name not in (".", "..") and not name.startswith(".")
    assert not any(c in name for c in "*?\\")
    assert patient_id_from_name(name) == pid


def test_only_the_canonical_name_finds_a_patient():
    assert patient_id_from_name("A%2FB") == "A/B"
    assert patient_id_from_name("%41") is None  # would be "A", whose name is "A"
    assert patient_id_from_name("%ff") is None


def test_descriptive_names_are_safe_and_unique():
    hostile = {"StudyDate": "2024/01/01", "StudyDescription": "../../etc\0passwd", "SeriesNumber": "x",
               "Modality": "C/T", "InstanceNumber": "3"}
    naming = Naming()
    for name in (naming.study.name({**hostile, "StudyInstanceUID": "1.2/3"}),
                 naming.series.name({**hostile, "SeriesInstanceUID": ".."}),
                 naming.instance.name({**hostile, "SOPInstanceUID": "1.2"})):
        assert "/" not in name and "\0" not in name and name not in (".", "..") and not name.startswith(".")
    names = unique_names([("same", "2"), ("same", "1"), ("x.dcm", "3"), ("x.dcm", "4")])
    assert names == {"same": "1", "same~2": "2", "x.dcm": "3", "x~2.dcm": "4"}


def test_naming_templates_reject_unknown_keywords_and_survive_odd_values():
    with pytest.raises(ConfigError, match="NotAKeyword"):
        load_config({"source": SOURCE, "series_name": "{NotAKeyword}"}, environ={})
    with pytest.raises(ConfigError, match="naming template"):
        load_config({"source": SOURCE, "study_name": "{StudyDate"}, environ={})
    template = NameTemplate("{SeriesNumber:c}_{SeriesInstanceUID}")
    assert template.name({"SeriesNumber": 10**12, "SeriesInstanceUID": "1.2"}) == "1.2"  # no OverflowError
    assert NameTemplate("{SeriesDescription}").name({}) == "unnamed"


def test_a_damaged_cached_header_gives_no_xattrs_not_an_error(tmp_path):
    damaged = tmp_path / "x.dcm"
    damaged.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    with open(damaged, "rb") as file:
        assert header_attributes(file.fileno()) == {}


def test_urls_keep_dicom_wildcards_raw():
    url = build_url(SOURCE, "studies", [("PatientName", "DOE^J*"), ("x", "a b&c")])
    assert url == f"{SOURCE}/studies?PatientName=DOE^J*&x=a%20b%26c"


def test_docs_options_md_is_generated_from_the_config_model():
    from pathlib import Path

    from trolleyfs.config import options_reference

    assert (Path(__file__).parents[2] / "docs" / "options.md").read_text() == options_reference()


def test_a_dicom_source_defaults_to_c_find_and_c_get():
    config = load_config({"source": "dicom://ORTHANC@127.0.0.1:4242", "calling_aet": "TROLLEY"}, {})
    assert (config.resolved_searcher, config.resolved_downloader) == ("dicom-qr", "c-get")
    assert config.dimse_node == ("ORTHANC", "127.0.0.1", 4242)


def test_mixed_backends_need_the_other_protocols_address():
    web, dimse = SOURCE, "dicom://ORTHANC@127.0.0.1:4242"
    mixed = load_config({"source": web, "searcher": "dicom-qr", "qr_url": dimse}, {})
    assert (mixed.resolved_searcher, mixed.resolved_downloader, mixed.dimse_node.port) == ("dicom-qr", "wado-rs", 4242)
    other = load_config({"source": dimse, "downloader": "wado-rs", "wado_rs_url": web}, {})
    assert (other.resolved_searcher, other.resolved_wado_rs_url) == ("dicom-qr", web)
    with pytest.raises(ConfigError, match="qr_url"):
        load_config({"source": web, "downloader": "c-move"}, {})
    with pytest.raises(ConfigError, match="wado_rs_url"):
        load_config({"source": dimse, "downloader": "wado-rs"}, {})
    with pytest.raises(ConfigError, match="qido_url"):
        load_config({"source": dimse, "searcher": "qido-rs"}, {})


@pytest.mark.parametrize("url", ["dicom://127.0.0.1:4242", "dicom://AET@127.0.0.1", "dicom://AET@:4242",
                                 "dicom://A_VERY_LONG_AE_TITLE_X@h:1"])
def test_malformed_dimse_urls_are_refused(url):
    with pytest.raises(ConfigError, match="dicom://"):
        load_config({"source": url}, {})


def test_mint_and_rad69_take_their_own_addresses_and_the_mint_root_may_be_the_source():
    mint_root, rad69 = "http://pacs:8080/mint", "http://pacs:8080/rad69"
    config = load_config({"source": mint_root, "searcher": "mint", "downloader": "rad69", "rad69_url": rad69}, {})
    assert (config.resolved_searcher, config.resolved_mint_url, config.rad69_url) == ("mint", mint_root, rad69)
    mixed = load_config({"source": SOURCE, "downloader": "rad69", "rad69_url": rad69, "rad69_batch_size": "50"}, {})
    assert (mixed.resolved_searcher, mixed.rad69_batch_size, mixed.rad69_repository_id) == ("qido-rs", 50, "1.3.6.1.4.1000")
    with pytest.raises(ConfigError, match="rad69_url"):
        load_config({"source": mint_root, "searcher": "mint", "downloader": "rad69"}, {})
    with pytest.raises(ConfigError, match="mint_url"):
        load_config({"source": "dicom://ORTHANC@127.0.0.1:4242", "searcher": "mint"}, {})
    with pytest.raises(ConfigError, match="rad69_url must be an http"):
        load_config({"source": mint_root, "downloader": "rad69", "rad69_url": "ftp://pacs/rad69"}, {})
