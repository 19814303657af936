"""The study, series and instance nodes every view shares, and the folder of studies that a view
fills from one search.

- :class:`StudiesDir`: a folder listing the studies of one study-level Query (a patient, an
  accession number, a day, a ``/query`` name); each view says which Query and which studies.
- :class:`StudyDir`: its series (one series-level search) and ``study.json``.
- :class:`SeriesDir`: its instances (one instance-level search) and ``series.json``.
- :class:`InstanceFile`: downloaded into the cache on ``open``, never on lookup, stat or listing.
  An instance reached through two views is one cache entry (the cache is keyed by SOPInstanceUID).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from trolleyfs.cache import Arrival
from trolleyfs.fs.generated import GeneratedFile
from trolleyfs.fs.names import NameTemplate, study_time, unique_names
from trolleyfs.fs.nodes import Directory, File, Node, OpenFile, Tree
from trolleyfs.fs.previews import PREVIEW_NAME, SeriesPreview, StudyPreview, holds_images
from trolleyfs.fs.sidecars import dicom_json, header_attributes, render_json, text_of, xattr_values
from trolleyfs.model import (
    LISTING_FIELDS,
    UNIQUE_KEYWORDS,
    Instance,
    InstanceReference,
    Query,
    QueryLevel,
    Series,
    SeriesReference,
    Studies,
    Study,
)

log = logging.getLogger(__name__)

STUDY_SIDECAR = "study.json"
SERIES_SIDECAR = "series.json"
_HEADER_ALLOWANCE = 4096
_header_limiter = trio.CapacityLimiter(4)
_BY_UID = "\0uid:"  # key part of a folder looked up by UID (NUL is in no name)
PATIENT_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")


class StudiesDir(Directory):
    """A folder of studies: the answer to :meth:`study_query`, narrowed by :meth:`keeps`."""

    def study_query(self) -> Query | None:
        """The search that lists this folder; None lists nothing."""
        raise NotImplementedError

    def keeps(self, study: Study) -> bool:
        """Whether a study of the answer belongs here (servers match loosely: names case-
        insensitively, values as wildcards; a folder promises exact matches)."""
        return True

    def study_name(self, study: Study) -> str:
        return self.mount.settings.naming.study.name(self.tree.visible(study.attributes))

    async def answer(self) -> Studies:
        query = self.study_query()
        if query is None:
            return Studies()
        return await self.mount.trolley.find_studies(with_fields(query, self.mount.settings.naming.study))

    async def entries(self) -> dict[str, Node]:
        answer = await self.answer()
        if self.up_to_date(answer):
            return self.children  # type: ignore[return-value]
        studies = {study.uid: study for study in answer if self.keeps(study)}
        names = unique_names([(self.study_name(study), uid) for uid, study in studies.items()])
        children: dict[str, Node] = {}
        for name, uid in names.items():
            children[name] = self.child(self.tree.study_dir, uid).showing(studies[uid])  # type: ignore[attr-defined]
        return self.built(children, answer)


class StudyDir(Directory):
    study: Study

    def showing(self, study: Study) -> StudyDir:
        self.study = study
        self.mtime = study_time(study.attributes) or self.mount.mount_time
        return self

    def series_query(self) -> Query:
        return with_fields(
            Query(StudyInstanceUID=self.study.uid, query_level=QueryLevel.SERIES), self.mount.settings.naming.series
        )

    async def entries(self) -> dict[str, Node]:
        answer = await self.mount.trolley.find_studies(self.series_query())
        if self.up_to_date(answer):
            return self.children  # type: ignore[return-value]
        study = answer.study(self.study.uid)
        series = study.series if study else []
        naming = self.mount.settings.naming.series
        files = self.files()
        visible = self.tree.visible
        names = unique_names([(naming.name(visible(s.attributes)), s.uid) for s in series], frozenset(files))
        by_uid = {s.uid: s for s in series}
        children: dict[str, Node] = {}
        for name, uid in names.items():
            if not self.keeps_series(by_uid[uid]):
                continue
            children[name] = self.child(self.tree.series_dir, uid).showing(self, by_uid[uid])  # type: ignore[attr-defined]
        self._series_prefetched = False
        return self.built({**children, **files}, answer)

    def keeps_series(self, series: Series) -> bool:
        """Whether a series of the study is shown in this tree."""
        return True

    def files(self) -> dict[str, Node]:
        """The files beside the series: ``study.json`` and the study's ``preview.png``."""
        return {
            STUDY_SIDECAR: self.child(GeneratedFile, STUDY_SIDECAR).generated_by(self.render_sidecar),
            PREVIEW_NAME: self.child(StudyPreview, PREVIEW_NAME).of_study(self),
        }

    _series_prefetched = False

    def prefetch_series_listings(self) -> None:
        """``ls -lR`` and file managers open a study's series one after the other: once the first
        is opened, list the others in the background (two searches at a time) when there are few
        enough. (Listing the study alone searches nothing more.)"""
        series = self.series_dirs()
        if self._series_prefetched or not 0 < len(series) <= self.mount.settings.listing_readahead:
            return
        self._series_prefetched = True
        self.mount.trolley.prefetch_searches([node.instance_query() for node in series])

    def series_dirs(self) -> list[SeriesDir]:
        return [node for node in (self.children or {}).values() if isinstance(node, SeriesDir)]

    def by_uid(self, name: str, entries: dict[str, Node]) -> Node | None:
        series = self._by_part.get(name)
        if not isinstance(series, SeriesDir) or not self.tree.searchable_names:
            return None
        # a folder of its own: one directory may not have two names
        return self.child(type(series), _BY_UID + name).showing(self, series.series)

    def render_sidecar(self) -> bytes:
        return render_json(dicom_json(self.study.attributes))

    async def xattrs(self) -> dict[str, bytes]:
        return xattr_values(self.study.attributes)


class SeriesDir(Directory):
    study_dir: StudyDir
    series: Series
    instances: list[Instance] = []  # noqa: RUF012 - replaced, never changed in place

    def showing(self, study_dir: StudyDir, series: Series) -> SeriesDir:
        self.study_dir, self.series, self.mtime = study_dir, series, study_dir.mtime
        return self

    @property
    def modalities(self) -> tuple[str, ...]:
        """The series' Modality as its search told it (a hint for downloaders), if it did."""
        modality = text_of(self.series.attributes.get("Modality"))
        return (modality,) if modality else ()

    def instance_query(self) -> Query:
        query = Query(
            StudyInstanceUID=self.study_dir.study.uid, SeriesInstanceUID=self.series.uid,
            query_level=QueryLevel.INSTANCE,
        )
        return with_fields(query, self.mount.settings.naming.instance)

    async def search_instances(self) -> tuple[Studies, list[Instance]]:
        """The instance-level search of this series (a listing's, while its answer is cached)."""
        answer = await self.mount.trolley.find_studies(self.instance_query())
        study = answer.study(self.study_dir.study.uid)
        series = next((s for s in study.series if s.uid == self.series.uid), None) if study else None
        return answer, series.instances if series else []

    async def entries(self) -> dict[str, Node]:
        self.study_dir.prefetch_series_listings()
        answer, instances = await self.search_instances()
        if self.up_to_date(answer):
            return self.children  # type: ignore[return-value]
        self.instances = instances
        naming = self.mount.settings.naming.instance
        files = self.files()
        by_uid = {instance.uid: instance for instance in self.instances}
        visible = self.tree.visible
        named = [(naming.name(visible({"SOPInstanceUID": i.uid, **i.attributes})), i.uid) for i in self.instances]
        children: dict[str, Node] = {}
        for name, uid in unique_names(named, frozenset(files)).items():
            children[name] = self.child(self.tree.instance_file, uid).showing(self, by_uid[uid])  # type: ignore[attr-defined]
        return self.built({**children, **files}, answer)

    def files(self) -> dict[str, Node]:
        """The files beside the instances: ``series.json`` and, for images, ``preview.png``."""
        files: dict[str, Node] = {
            SERIES_SIDECAR: self.child(GeneratedFile, SERIES_SIDECAR).generated_by(self.render_sidecar),
        }
        if holds_images(self.series.attributes):
            files[PREVIEW_NAME] = self.child(SeriesPreview, PREVIEW_NAME).of_series(self)
        return files

    def by_uid(self, name: str, entries: dict[str, Node]) -> Node | None:
        found = self._by_part.get(name.removesuffix(".dcm"))  # <SOPInstanceUID>.dcm
        return found if isinstance(found, InstanceFile) and self.tree.searchable_names else None

    def read_ahead_after(self) -> None:
        """After one of its files had to be downloaded, fetch the rest of the series in the background when the series (as estimated from its listing) fits within
        ``readahead_max`` and some of it is not cached yet (the file may have been the last one a
        read-ahead just delivered)."""
        trolley = self.mount.trolley
        if trolley.reading_ahead(self.series.uid):
            return
        estimate = sum(estimated_size(i.attributes) or typical_size(self.modalities) for i in self.instances)
        missing = any(i.uid not in trolley.cache and not trolley.cache.arriving(i.uid) for i in self.instances)
        if len(self.instances) > 1 and missing and estimate <= self.mount.settings.readahead_max:
            sop_classes = tuple(sorted({text_of(i.attributes.get("SOPClassUID")) for i in self.instances} - {""}))
            trolley.read_ahead(
                SeriesReference(
                    study_uid=self.study_dir.study.uid, series_uid=self.series.uid, sop_class_uids=sop_classes,
                    modalities=self.modalities, listed_uids=frozenset(i.uid for i in self.instances),
                ),
                estimate,
            )

    def reference_of(self, instance: Instance) -> InstanceReference:
        return InstanceReference(
            study_uid=self.study_dir.study.uid,
            series_uid=self.series.uid,
            instance_uid=instance.uid,
            sop_class_uid=text_of(instance.attributes.get("SOPClassUID")),
            modalities=self.modalities,
        )

    def render_sidecar(self) -> bytes:
        return render_json({
            "series": dicom_json(self.series.attributes),
            "instances": [dicom_json({"SOPInstanceUID": i.uid, **i.attributes}) for i in self.instances],
        }, indent=None)

    async def xattrs(self) -> dict[str, bytes]:
        return xattr_values(self.series.attributes)

    def forgotten(self) -> None:
        super().forgotten()
        self.instances = []


class InstanceFile(File):
    series_dir: SeriesDir
    instance: Instance
    size_exact = False
    """Exact once downloaded; before that an estimate (see docs/semantics.md)."""
    _header: dict[str, Any] | None = None

    def showing(self, series_dir: SeriesDir, instance: Instance) -> InstanceFile:
        self.series_dir, self.instance, self.mtime = series_dir, instance, series_dir.mtime
        if not self.size_exact:
            self.size = estimated_size(instance.attributes) or typical_size(series_dir.modalities)
        self.refresh()
        return self

    @property
    def uid(self) -> str:
        return self.instance.uid

    def refresh(self) -> None:
        if not self.size_exact:
            cached = self.mount.trolley.cache.peek(self.uid)
            if cached is not None:
                self.size, self.size_exact = cached.size, True

    @property
    def attr_timeout(self) -> float:
        return self.mount.settings.listing_ttl if self.size_exact else 0.0

    @property
    def reference(self) -> InstanceReference:
        return self.series_dir.reference_of(self.instance)

    async def open(self) -> OpenFile:
        """Open the instance's cache file, downloading it first unless cached; returns once its
        size is known (fstat right after open tells it) and what has arrived can be read."""
        trolley = self.mount.trolley
        was_cached = self.uid in trolley.cache
        opened = await trolley.open_instance(self.reference)
        if not was_cached:
            self.series_dir.read_ahead_after()
        self.size, self.size_exact = opened.size, True
        return OpenFile(self, fd=opened.fd, just_written=opened.just_written, arrival=opened.arrival)

    async def xattrs(self) -> dict[str, bytes]:
        """What the search told, and, once the file is cached, the text elements of its header."""
        attributes = {"SOPInstanceUID": self.uid, **self.instance.attributes}
        cache = self.mount.trolley.cache
        if self._header is None:
            opened = await cache.open_for_reading(self.uid) or cache.open_arrival(self.uid)  # pinned meanwhile
            if opened is not None:
                fd, entry = opened
                try:
                    if isinstance(entry, Arrival) and entry.arrived < (entry.size or 0):
                        return xattr_values(attributes)  # not all here yet: no download is waited for
                    self._header = await trio.to_thread.run_sync(header_attributes, fd, limiter=_header_limiter)
                finally:
                    cache.close_for_reading(self.uid, fd)
        return xattr_values({**attributes, **(self._header or {})})


DICOM_TREE = Tree(study_dir=StudyDir, series_dir=SeriesDir, instance_file=InstanceFile)
"""The DICOM views at the root of the mount."""


def with_fields(query: Query, naming: NameTemplate) -> Query:
    """``query`` asking also for what the naming template of its level reads (beyond what every
    search of that level asks, so that the default names ask for nothing more)."""
    usual = {*LISTING_FIELDS[query.query_level], *query.include_fields, *UNIQUE_KEYWORDS}
    extra = tuple(name for name in naming.fields if name not in usual)
    return query.model_copy(update={"include_fields": (*query.include_fields, *extra)}) if extra else query


def patient_attributes(studies: list[Study]) -> dict[str, Any]:
    first = studies[0].attributes if studies else {}
    return {keyword: first[keyword] for keyword in PATIENT_KEYWORDS if keyword in first}


def estimated_size(attributes: dict[str, Any]) -> int:
    """Pixel bytes plus a header allowance, from what the search told; 0 when it told nothing."""
    try:
        rows, columns, bits = (int(attributes[name]) for name in ("Rows", "Columns", "BitsAllocated"))
    except (KeyError, TypeError, ValueError):
        return 0
    samples = int_or(attributes.get("SamplesPerPixel"), 1)
    frames = int_or(attributes.get("NumberOfFrames"), 1)
    return rows * columns * samples * frames * ((bits + 7) // 8) + _HEADER_ALLOWANCE


_TYPICAL_PIXELS = {  # rows x columns x bytes per pixel of a typical image of each modality
    "CT": 512 * 512 * 2, "MR": 256 * 256 * 2, "PT": 128 * 128 * 2, "NM": 128 * 128 * 2, "CR": 2048 * 2048 * 2,
    "DX": 2048 * 2048 * 2, "MG": 3328 * 4096 * 2, "US": 640 * 480 * 3, "XA": 1024 * 1024, "RF": 1024 * 1024,
}


def typical_size(modalities: tuple[str, ...]) -> int:
    """An estimate when the search told no Rows and Columns (dcmqrscp does not): the pixel bytes
    of a typical image of the modality (512 x 512 x 2 when unknown), so that no file looks empty."""
    return _TYPICAL_PIXELS.get(modalities[0] if modalities else "", 512 * 512 * 2) + _HEADER_ALLOWANCE


def int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
