"""``/deid/patients/...`` and ``/deid/studies/...``: the DICOM views de-identified on the fly.

Every name is made of de-identified attributes only (a pseudonym for the patient, remapped UIDs,
series and instance numbers, the modality; see :mod:`trolleyfs.derived.deid`), so a folder is
reached by listing, never by searching for a name (a pseudonym cannot be searched for). Opening
an instance downloads the original through the normal path, de-identifies it in a worker thread
and keeps the result in the cache under a key of its own (the original stays as it was); later
opens are cache hits. Instances that may carry burned-in text are refused with EACCES, before any
download when the modality tells it, after it when the file's BurnedInAnnotation does. No
sidecars, previews or extended attributes here: they would show the original values.
There is no ``/deid`` without a ``deid_secret``.
"""

from __future__ import annotations

import os

import trio

from trolleyfs.cache import disk_limiter
from trolleyfs.derived.deid import Deidentifier
from trolleyfs.fs.derived import DerivedFile
from trolleyfs.fs.dicom import SeriesDir, StudyDir, estimated_size, typical_size
from trolleyfs.fs.nodes import Directory, Node, Tree, TreeRoot
from trolleyfs.fs.settings import FsSettings
from trolleyfs.fs.sidecars import text_of
from trolleyfs.fs.views.patients import PatientsRoot
from trolleyfs.fs.views.studies import StudiesRoot
from trolleyfs.model import Instance

_deid_limiter = trio.CapacityLimiter(2)


class DeidStudyDir(StudyDir):
    def files(self) -> dict[str, Node]:
        return {}


class DeidSeriesDir(SeriesDir):
    def files(self) -> dict[str, Node]:
        return {}


class DeidInstanceFile(DerivedFile):
    series_dir: SeriesDir
    instance: Instance

    def showing(self, series_dir: SeriesDir, instance: Instance) -> DeidInstanceFile:
        self.series_dir, self.instance, self.mtime = series_dir, instance, series_dir.mtime
        self.refresh()
        return self

    @property
    def deidentifier(self) -> Deidentifier:
        deidentifier = self.mount.settings.deidentifier
        assert deidentifier is not None  # no /deid without one
        return deidentifier

    @property
    def uid(self) -> str:
        return f"deid:{self.deidentifier.version}:{self.instance.uid}"

    def estimate(self) -> int:
        return estimated_size(self.instance.attributes) or typical_size(self.series_dir.modalities)

    async def make(self) -> None:
        deidentifier = self.deidentifier
        deidentifier.refuse_unchecked(
            text_of(self.series_dir.series.attributes.get("Modality")), text_of(self.instance.attributes.get("SOPClassUID"))
        )
        trolley = self.mount.trolley
        was_cached = self.instance.uid in trolley.cache
        opened = await trolley.open_instance(self.series_dir.reference_of(self.instance))
        if not was_cached:  # as for the original: the rest of the series follows in the background
            self.series_dir.read_ahead_after()
        try:
            if opened.arrival is not None:
                await opened.arrival.wait_for(opened.size)
            original = await trio.to_thread.run_sync(os.pread, opened.fd, opened.size, 0, limiter=disk_limiter)
        finally:
            trolley.cache.close_for_reading(self.instance.uid, opened.fd)
        data = await trio.to_thread.run_sync(deidentifier.deidentify, original, limiter=_deid_limiter)
        await self.mount.derived.publish_bytes(self.uid, data)


class DeidRoot(TreeRoot):
    """``/deid``: the views whose names can all be de-identified."""

    @classmethod
    def offered(cls, settings: FsSettings) -> bool:
        return settings.deidentifier is not None

    def tree_and_views(self) -> tuple[Tree, dict[str, type[Directory]]]:
        deidentifier = self.mount.settings.deidentifier
        assert deidentifier is not None
        tree = Tree(
            study_dir=DeidStudyDir, series_dir=DeidSeriesDir, instance_file=DeidInstanceFile,
            visible=deidentifier.visible, visible_uid=deidentifier.uid, searchable_names=False, attributes_shown=False,
        )
        return tree, {"patients": PatientsRoot, "studies": StudiesRoot}
