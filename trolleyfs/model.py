"""The domain model: queries, query levels, the Study/Series/Instance tree and references.

In the spirit of dicomtrolley: a :class:`Query` asks a searcher for studies; the answer is a list of
:class:`Study` objects whose :class:`Series` and :class:`Instance` children are filled down to the
query level, each child linked to its parent. A reference (:class:`StudyReference`,
:class:`SeriesReference`, :class:`InstanceReference`) names something that can be downloaded
without a query first. Searchers hand this module flat records (DICOM keyword -> value) and
:func:`build_studies` assembles the tree, so every backend yields the same shapes.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydicom.datadict import tag_for_keyword


PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
"""The component groups of a person name (PS3.5 6.2.1), ``=``-separated in its text form and
the keys of its DICOM JSON object (PS3.18 F.2.2)."""

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_uid(value: str) -> bool:
    """Whether ``value`` has the form of a DICOM UID (PS3.5 §9.1): digits and dots, at most 64
    characters. Components with a leading zero, which older systems produce, are accepted."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


class QueryLevel(str, enum.Enum):
    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "INSTANCE"


class Query(BaseModel):
    """What to search for. String values may hold ``*`` and ``?`` wildcards, passed on as-is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    PatientName: str = ""
    PatientID: str = ""
    PatientBirthDate: str = ""
    """A date or a range in DICOM syntax: ``YYYYMMDD``, ``A-B``, ``-B`` or ``A-``."""
    AccessionNumber: str = ""
    StudyInstanceUID: str = ""
    SeriesInstanceUID: str = ""
    ModalitiesInStudy: str = ""
    StudyDescription: str = ""
    ReferringPhysicianName: str = ""
    StudyID: str = ""
    min_study_date: datetime.date | None = None
    max_study_date: datetime.date | None = None
    include_fields: tuple[str, ...] = ()
    """Extra DICOM keywords the answer should carry (e.g. ``StudyDescription``)."""
    query_level: QueryLevel = QueryLevel.STUDY
    limit: int | None = None
    """At most this many results; None means all (backends page through to the end)."""

    @field_validator("include_fields")
    @classmethod
    def _known_keywords(cls, fields: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in fields if tag_for_keyword(name) is None]
        if unknown:
            raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
        return fields

    @model_validator(mode="after")
    def _consistent(self) -> Query:
        if self.min_study_date and self.max_study_date and self.min_study_date > self.max_study_date:
            raise ValueError("min_study_date is after max_study_date")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.SeriesInstanceUID and self.query_level is QueryLevel.STUDY:
            raise ValueError("SeriesInstanceUID needs query_level SERIES or INSTANCE")
        return self

    def study_date_range(self) -> str:
        """The StudyDate matching value in DICOM syntax (a single date when both ends are the
        same day, else a range), or '' when unbounded."""
        if not (self.min_study_date or self.max_study_date):
            return ""
        if self.min_study_date == self.max_study_date:
            return self.min_study_date.strftime("%Y%m%d")
        low = self.min_study_date.strftime("%Y%m%d") if self.min_study_date else ""
        high = self.max_study_date.strftime("%Y%m%d") if self.max_study_date else ""
        return f"{low}-{high}"

    def matching_keys(self) -> dict[str, str]:
        """The DICOM attribute matches this query sends, by keyword (empty ones left out)."""
        keys = {
            name: getattr(self, name)
            for name in MATCHING_KEYWORDS
            if getattr(self, name)
        }
        if date_range := self.study_date_range():
            keys["StudyDate"] = date_range
        return keys

    def has_matching_key(self) -> bool:
        """Whether the query narrows the archive at all (one without is a search of everything)."""
        return bool(self.matching_keys())


MATCHING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ModalitiesInStudy",
    "StudyDescription",
    "ReferringPhysicianName",
    "StudyID",
)
"""The Query fields sent as DICOM attribute matches, by their keyword (StudyDate is built from
``min_study_date``/``max_study_date``)."""


class StudyReference(BaseModel):
    model_config = ConfigDict(frozen=True)
    study_uid: str
    sop_class_uids: tuple[str, ...] = ()
    """SOP classes known to be in it (a hint for DIMSE downloaders; may be empty)."""
    modalities: tuple[str, ...] = ()
    """Modalities known to be in it (a hint for DIMSE downloaders when the SOP classes are not known)."""

    def admits(self, study_uid: str, series_uid: str, instance_uid: str) -> bool:
        """Whether an instance with these UIDs is one of those this reference names: a PACS
        sending anything else is not believed (it would be cached under a UID it does not own)."""
        return study_uid == self.study_uid

    def admits_uid(self, instance_uid: str) -> bool | None:
        """Whether the SOPInstanceUID alone admits (True) or refuses (False) an instance; None
        when its study and series UIDs must be read to decide."""
        return None


class SeriesReference(BaseModel):
    model_config = ConfigDict(frozen=True)
    study_uid: str
    series_uid: str
    sop_class_uids: tuple[str, ...] = ()
    """SOP classes known to be in it (a hint for DIMSE downloaders; may be empty)."""
    modalities: tuple[str, ...] = ()
    """Its modality, when known (a hint for DIMSE downloaders when the SOP classes are not known)."""
    instance_uids: tuple[str, ...] = ()
    """Its instances, when known: a downloader that fetches named instances (RAD-69) can then
    fetch the series in batches instead of asking for its instances one by one, and no other
    instance is admitted."""
    listed_uids: frozenset[str] = frozenset()
    """The instances its listing showed (not asked for by name): an answer's instance is
    admitted by its SOPInstanceUID being one of them, which is cheaper to read than its header."""

    @cached_property
    def _named(self) -> frozenset[str]:
        return frozenset(self.instance_uids)

    def admits(self, study_uid: str, series_uid: str, instance_uid: str) -> bool:
        return (study_uid, series_uid) == (self.study_uid, self.series_uid) and (
            not self.instance_uids or instance_uid in self._named
        )

    def admits_uid(self, instance_uid: str) -> bool | None:
        if self.instance_uids:
            return instance_uid in self._named
        if self.listed_uids:
            return instance_uid in self.listed_uids
        return None


class InstanceReference(BaseModel):
    model_config = ConfigDict(frozen=True)
    study_uid: str
    series_uid: str
    instance_uid: str
    sop_class_uid: str = ""
    """Its SOP class, when known (a hint for DIMSE downloaders)."""
    modalities: tuple[str, ...] = ()
    """Its series' modality, when known (a hint for DIMSE downloaders without the SOP class)."""

    @property
    def sop_class_uids(self) -> tuple[str, ...]:
        return (self.sop_class_uid,) if self.sop_class_uid else ()

    def admits(self, study_uid: str, series_uid: str, instance_uid: str) -> bool:
        return (study_uid, series_uid, instance_uid) == (self.study_uid, self.series_uid, self.instance_uid)

    def admits_uid(self, instance_uid: str) -> bool | None:
        return None if instance_uid == self.instance_uid else False  # and then its study and series


Reference = StudyReference | SeriesReference | InstanceReference


@dataclass(eq=False)
class Study:
    uid: str
    attributes: dict[str, Any] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)

    @property
    def reference(self) -> StudyReference:
        return StudyReference(study_uid=self.uid)


@dataclass(eq=False)
class Series:
    uid: str
    parent: Study = field(repr=False)
    attributes: dict[str, Any] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)

    @property
    def reference(self) -> SeriesReference:
        return SeriesReference(study_uid=self.parent.uid, series_uid=self.uid)


@dataclass(eq=False)
class Instance:
    uid: str
    parent: Series = field(repr=False)
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> InstanceReference:
        series = self.parent
        return InstanceReference(
            study_uid=series.parent.uid,
            series_uid=series.uid,
            instance_uid=self.uid,
            sop_class_uid=str(self.attributes.get("SOPClassUID", "")),
        )


STUDY_KEYWORDS = frozenset(
    {
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "StudyID",
        "StudyInstanceUID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    }
)
SERIES_KEYWORDS = frozenset(
    {"Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"}
)


class Studies(list):  # type: ignore[type-arg]
    """A searcher's answer: a list of studies, which says whether it is the whole answer.

    ``truncated`` names why it is not (a limit reached, a PACS that stopped paging early or sent
    QIDO's ``Warning: 299``); empty means complete. The filesystem may refer to it weakly."""

    __slots__ = ("truncated", "__weakref__")

    def __init__(self, studies: Iterable[Study] = (), truncated: str = "") -> None:
        super().__init__(studies)
        self.truncated = truncated

    def study(self, uid: str) -> Study | None:
        """The study of this answer with StudyInstanceUID ``uid``, if any."""
        return next((study for study in self if study.uid == uid), None)


LISTING_FIELDS = {
    QueryLevel.STUDY: (
        "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyDescription",
        "AccessionNumber", "StudyID", "ModalitiesInStudy",
    ),
    QueryLevel.SERIES: ("Modality", "SeriesNumber", "SeriesDescription"),
    QueryLevel.INSTANCE: (
        "SOPClassUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
    ),
}
"""The return fields every search of a level asks for (with those of the levels above), so that
a directory listing can name and size its entries; searchers add a query's ``include_fields``."""
UNIQUE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
"""Always in an answer, never asked for."""


def _uid_text(value: Any) -> str:
    """A UID of a record as text: a PACS may send one as a JSON number; anything else (a list,
    an object) names nothing."""
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""


def build_studies(records: Iterable[Mapping[str, Any]], level: QueryLevel, truncated: str = "") -> Studies:
    """Assemble flat keyword records (one per study, series or instance) into a Study tree.

    Records of one study or series are merged, in the order they first appear. In a record of
    the query's own level every attribute belongs to that level's object (a STUDY record is all
    study); deeper records give study-level keywords to the study, series-level ones to the
    series and everything else to the instance.
    """
    studies: dict[str, Study] = {}
    series_by_uid: dict[tuple[str, str], Series] = {}
    for record in records:
        study_uid = _uid_text(record.get("StudyInstanceUID"))
        if not study_uid:
            continue
        study = studies.get(study_uid)
        if study is None:
            study = studies[study_uid] = Study(uid=study_uid)
        if level is QueryLevel.STUDY:
            study.attributes.update(record)
            continue
        study.attributes.update({k: v for k, v in record.items() if k in STUDY_KEYWORDS})
        series_uid = _uid_text(record.get("SeriesInstanceUID"))
        if not series_uid:
            continue
        series = series_by_uid.get((study_uid, series_uid))
        if series is None:
            series = series_by_uid[(study_uid, series_uid)] = Series(uid=series_uid, parent=study)
            study.series.append(series)
        if level is QueryLevel.SERIES:
            series.attributes.update({k: v for k, v in record.items() if k not in STUDY_KEYWORDS})
            continue
        series.attributes.update({k: v for k, v in record.items() if k in SERIES_KEYWORDS})
        if level is QueryLevel.INSTANCE and (sop_uid := _uid_text(record.get("SOPInstanceUID"))):
            attributes = {
                k: v for k, v in record.items() if k not in STUDY_KEYWORDS and k not in SERIES_KEYWORDS
            }
            series.instances.append(Instance(uid=sop_uid, parent=series, attributes=attributes))
    return Studies(studies.values(), truncated)
