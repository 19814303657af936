"""The /query name codec: one name stands for one Query, both ways."""

from __future__ import annotations

import datetime

import hypothesis.strategies as st
from hypothesis import given

from trolleyfs.fs.query_names import KEYS, parse_query_name, query_name
from trolleyfs.model import Query

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12)
_DAY = st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2100, 12, 31))


@st.composite
def queries(draw: st.DrawFn) -> Query:
    fields: dict[str, object] = {}
    for key in draw(st.sets(st.sampled_from([k for k in KEYS if k != "StudyDate"]), min_size=1)):
        if key == "PatientBirthDate":
            low, high = sorted(draw(st.lists(_DAY, min_size=2, max_size=2)))
            fields[key] = draw(st.sampled_from([f"{low:%Y%m%d}", f"{low:%Y%m%d}-{high:%Y%m%d}", f"-{high:%Y%m%d}"]))
        else:
            fields[key] = draw(_TEXT)
    if draw(st.booleans()):
        low, high = sorted(draw(st.lists(_DAY, min_size=2, max_size=2)))
        fields["min_study_date"], fields["max_study_date"] = draw(
            st.sampled_from([(low, high), (low, None), (None, high), (low, low)]))
    if draw(st.booleans()):
        fields["limit"] = draw(st.integers(1, 10**6))
    return Query(**fields)


@given(queries())
def test_query_to_name_to_query_is_the_same_query(query: Query) -> None:
    name = query_name(query)
    assert "/" not in name and "\0" not in name
    assert parse_query_name(name) == query
    assert query_name(parse_query_name(name)) == name  # canonical names read back unchanged


def test_the_documented_example_reads_as_it_says() -> None:
    query = parse_query_name("PatientName=DOE*&StudyDate=20240101-20240131&ModalitiesInStudy=CT")
    assert query == Query(PatientName="DOE*", ModalitiesInStudy="CT",
                          min_study_date=datetime.date(2024, 1, 1), max_study_date=datetime.date(2024, 1, 31))
    assert parse_query_name("AccessionNumber=A%2FB%26C%25") == Query(AccessionNumber="A/B&C%")
    assert parse_query_name("StudyDate=20240115").matching_keys() == {"StudyDate": "20240115"}
    assert parse_query_name("ModalitiesInStudy=CT&PatientName=DOE*") == parse_query_name(
        "PatientName=DOE*&ModalitiesInStudy=CT")  # any order reads; the canonical one is written
