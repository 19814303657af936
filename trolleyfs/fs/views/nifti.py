"""``/nifti/patients/...`` and ``/nifti/studies/...``: every image series as NIfTI.

The tree mirrors the DICOM views down to the series, with the same names; a series folder holds
``series.nii`` and ``series.json`` (see :mod:`trolleyfs.derived.nifti`) and its ``preview.png``.
Listing and ``stat`` convert nothing (sizes are estimates until then); opening either file
converts the series once: its instances are downloaded through the normal path (those cached are
not fetched again), linked into a scratch folder, converted by dcm2niix in a worker thread, and
every file it wrote is published into the cache, where the same LRU evicts it; later opens are
cache hits. Volumes beyond the first (echoes, phase) appear in the folder, under dcm2niix's names,
once the series is converted. Series of non-image objects (reports, RT plans) have no folder here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import trio

from trolleyfs.cache import disk_limiter
from trolleyfs.derived.nifti import JSON, NII, VERSION, ConversionFailed, convert
from trolleyfs.errors import CacheError, first_error
from trolleyfs.fs.derived import DerivedFile
from trolleyfs.fs.dicom import InstanceFile, SeriesDir, StudyDir, estimated_size, int_or, typical_size
from trolleyfs.fs.nodes import Directory, Node, Tree, TreeRoot
from trolleyfs.fs.previews import holds_images
from trolleyfs.fs.sidecars import text_of
from trolleyfs.fs.views.patients import PatientsRoot
from trolleyfs.fs.views.studies import StudiesRoot
from trolleyfs.model import Instance, SeriesReference, Series

log = logging.getLogger(__name__)

_NIFTI_HEADER = 352
_SIDECAR_ESTIMATE = 2048
_conversion_limiter = trio.CapacityLimiter(1)
"""dcm2niix runs one at a time: it is CPU-bound, and the readers of the mount need a core."""


class NiftiStudyDir(StudyDir):
    def keeps_series(self, series: Series) -> bool:
        return holds_images(series.attributes)


class NiftiSeriesDir(SeriesDir):
    """A series as the files of its conversion; listing it searches and downloads nothing."""

    converted: dict[str, int] | None = None
    """The names and sizes of its conversion, once known (from the conversion or its manifest)."""

    @property
    def manifest_key(self) -> str:
        return f"nifti:{VERSION}:{self.series.uid}"

    def output_key(self, name: str) -> str:
        return f"{self.manifest_key}:{name}"

    async def entries(self) -> dict[str, Node]:
        if self.converted is None and self.manifest_key in self.mount.derived:
            self.converted = await self._read_manifest()
        names = [NII, JSON, *sorted(set(self.converted or ()) - {NII, JSON})]
        children: dict[str, Node] = {name: self.child(NiftiFile, name).of_series(self, name) for name in names}
        return self.built({**children, **self.files()})

    def files(self) -> dict[str, Node]:
        return {name: node for name, node in super().files().items() if name.endswith(".png")}

    def estimate(self, name: str) -> int:
        if name.endswith(".json"):
            return _SIDECAR_ESTIMATE
        count = int_or(self.series.attributes.get("NumberOfSeriesRelatedInstances"), 1)
        per_image = next((estimated_size(i.attributes) for i in self.instances[:1]), 0) or typical_size(self.modalities)
        return _NIFTI_HEADER + count * per_image

    async def convert(self) -> None:
        await self.mount.derived.once(self.manifest_key, self._convert)

    async def _convert(self) -> None:
        _, instances = await self.search_instances()
        if not instances:
            raise ConversionFailed("the series has no instances")
        self.instances = instances
        trolley = self.mount.trolley
        if await trolley.cache.missing(instance.uid for instance in instances):
            await trolley.download(SeriesReference(
                study_uid=self.study_dir.study.uid, series_uid=self.series.uid, modalities=self.modalities,
                sop_class_uids=tuple(sorted({text_of(i.attributes.get("SOPClassUID")) for i in instances} - {""})),
            ))
        work = trolley.cache.scratch / f"nifti-{uuid.uuid4().hex}"
        try:
            await self._link_instances(instances, work / "in")
            (work / "out").mkdir()
            try:
                async with _conversion_limiter:
                    outputs = await trio.to_thread.run_sync(convert, work / "in", work / "out", self.mount.settings.nifti_timeout)
            except ConversionFailed as exc:
                log.warning("/nifti: a %s series was not converted: %s", self.modalities[0] if self.modalities else "", exc)
                raise
            sizes = {}
            for name, path in outputs.items():
                sizes[name] = (await self.mount.derived.publish_file(self.output_key(name), path)).size
            await self.mount.derived.publish_bytes(self.manifest_key, json.dumps(sizes, sort_keys=True).encode())
            self.converted = sizes
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, work, True, limiter=disk_limiter)

    async def _link_instances(self, instances: list[Instance], folder: Path) -> None:
        """Each cached instance into ``folder`` (a hard link, or a copy across filesystems)."""
        await trio.to_thread.run_sync(lambda: folder.mkdir(parents=True, mode=0o700))
        trolley = self.mount.trolley

        async def link(index: int, instance: Instance) -> None:
            opened = await trolley.open_instance(self.reference_of(instance))
            try:
                if opened.arrival is not None:
                    await opened.arrival.wait_for(opened.size)
                await trio.to_thread.run_sync(_link_or_copy, opened.fd, folder / f"{index:06}.dcm", limiter=disk_limiter)
            finally:
                trolley.cache.close_for_reading(instance.uid, opened.fd)

        with first_error():
            async with trio.open_nursery() as nursery:
                for index, instance in enumerate(instances):
                    nursery.start_soon(link, index, instance)

    async def _read_manifest(self) -> dict[str, int] | None:
        opened = await self.mount.trolley.cache.open_for_reading(self.manifest_key)
        if opened is None:
            return None
        fd, entry = opened
        try:
            return json.loads(os.pread(fd, entry.size, 0))
        finally:
            self.mount.trolley.cache.close_for_reading(self.manifest_key, fd)


class NiftiFile(DerivedFile):
    series_dir: NiftiSeriesDir
    name: str

    def of_series(self, series_dir: NiftiSeriesDir, name: str) -> NiftiFile:
        self.series_dir, self.name, self.mtime = series_dir, name, series_dir.mtime
        self.refresh()
        return self

    @property
    def uid(self) -> str:
        return self.series_dir.output_key(self.name)

    def estimate(self) -> int:
        return self.series_dir.estimate(self.name)

    async def make(self) -> None:
        await self.series_dir.convert()
        if self.uid not in self.mount.derived:
            raise CacheError(f"dcm2niix wrote no {self.name} for this series")


class NiftiRoot(TreeRoot):
    """``/nifti``: the DICOM views whose folders reach series, as NIfTI."""

    def tree_and_views(self) -> tuple[Tree, dict[str, type[Directory]]]:
        tree = Tree(study_dir=NiftiStudyDir, series_dir=NiftiSeriesDir, instance_file=InstanceFile)
        return tree, {"patients": PatientsRoot, "studies": StudiesRoot}


def _link_or_copy(fd: int, target: Path) -> None:
    source = f"/proc/self/fd/{fd}"
    try:
        os.link(source, target, follow_symlinks=True)
    except OSError:  # another filesystem (a shared cache's scratch folder is this host's own)
        shutil.copyfile(source, target)
