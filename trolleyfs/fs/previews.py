"""``preview.png``: a thumbnail in every series folder and a montage of them in every study folder.

A series' preview is made from one representative instance, the middle one by InstanceNumber:
rendered by the PACS when the downloader can ask for that (WADO-RS ``/rendered``: one small
request, no instance download), else from that one instance, downloaded and windowed here (its
own WindowCenter/WindowWidth, or a percentile window). A study's montage is made of its series'
previews (the first ``MONTAGE_SERIES`` by name). Both are kept in the cache like any derived file.
Series of non-image objects (reports, presentation states, RT plans) have no preview.
"""

from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING, Any

import pydicom
import trio

from trolleyfs.cache import disk_limiter
from trolleyfs.derived.images import montage, thumbnail_of_dataset, thumbnail_of_image
from trolleyfs.errors import PacsProtocolError, TrolleyError, first_error
from trolleyfs.fs.derived import DerivedFile
from trolleyfs.fs.sidecars import text_of
from trolleyfs.model import Instance, InstanceReference

if TYPE_CHECKING:
    from trolleyfs.fs.dicom import SeriesDir, StudyDir
    from trolleyfs.fs.nodes import Mount

PREVIEW_NAME = "preview.png"
MONTAGE_SERIES = 16
NON_IMAGE_MODALITIES = frozenset({
    "SR", "KO", "PR", "DOC", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "REG", "FID", "SEG", "AU", "ECG",
    "HD", "EPS", "RWV", "OT-DOC", "PLAN", "RESP", "SMR",
})
"""Modalities of series that hold no image to show or convert (decided from the search answer)."""
_image_limiter = trio.CapacityLimiter(2)
_montage_limiter = trio.CapacityLimiter(4)


def holds_images(attributes: dict[str, Any]) -> bool:
    return text_of(attributes.get("Modality")).upper() not in NON_IMAGE_MODALITIES


def middle_instance(instances: list[Instance]) -> Instance:
    """The middle instance by InstanceNumber (those without one last, then by UID)."""
    def order(instance: Instance) -> tuple[float, str]:
        try:
            return float(instance.attributes.get("InstanceNumber")), instance.uid  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.inf, instance.uid

    ordered = sorted(instances, key=order)
    return ordered[(len(ordered) - 1) // 2]


class SeriesPreview(DerivedFile):
    series_dir: SeriesDir

    def of_series(self, series_dir: SeriesDir) -> SeriesPreview:
        self.series_dir, self.mtime = series_dir, series_dir.mtime
        self.refresh()
        return self

    @property
    def uid(self) -> str:
        return f"preview:{self.series_dir.series.uid}:{self.mount.settings.preview_size}"

    def estimate(self) -> int:
        return self.mount.settings.preview_size ** 2

    async def make(self) -> None:
        _, instances = await self.series_dir.search_instances()
        if not instances:
            raise TrolleyError("the series has no instances to preview")
        reference = self.series_dir.reference_of(middle_instance(instances))
        png = await thumbnail(self.mount, reference, self.mount.settings.preview_size)
        await self.mount.derived.publish_bytes(self.uid, png)

    async def png(self) -> bytes:
        """Its bytes, made first if need be (for a study's montage)."""
        fd, entry = await self.mount.derived.open(self.uid, self.make)
        try:
            return await trio.to_thread.run_sync(os.pread, fd, entry.size, 0, limiter=disk_limiter)
        finally:
            self.mount.trolley.cache.close_for_reading(self.uid, fd)


class StudyPreview(DerivedFile):
    study_dir: StudyDir

    def of_study(self, study_dir: StudyDir) -> StudyPreview:
        self.study_dir, self.mtime = study_dir, study_dir.mtime
        self.refresh()
        return self

    @property
    def uid(self) -> str:
        return f"montage:{self.study_dir.study.uid}:{self.mount.settings.preview_size}"

    def estimate(self) -> int:
        return self.mount.settings.preview_size ** 2 * 3

    async def make(self) -> None:
        await self.study_dir.entries()
        shown = (folder.files().get(PREVIEW_NAME) for folder in self.study_dir.series_dirs())
        previews = [preview for preview in shown if isinstance(preview, SeriesPreview)][:MONTAGE_SERIES]
        images: list[bytes | None] = [None] * len(previews)

        async def one(index: int, preview: SeriesPreview) -> None:
            async with _montage_limiter:
                images[index] = await preview.png()

        with first_error():
            async with trio.open_nursery() as nursery:
                for index, preview in enumerate(previews):
                    nursery.start_soon(one, index, preview)
        size = self.mount.settings.preview_size
        png = await trio.to_thread.run_sync(montage, [image for image in images if image], size, limiter=_image_limiter)
        await self.mount.derived.publish_bytes(self.uid, png)


async def thumbnail(mount: Mount, reference: InstanceReference, size: int) -> bytes:
    """A PNG thumbnail of one instance: the PACS's rendering when it offers one, else made here
    from the downloaded instance."""
    rendered = await mount.trolley.rendered(reference, size)
    if rendered is not None:
        try:
            return await trio.to_thread.run_sync(thumbnail_of_image, rendered, size, limiter=_image_limiter)
        except OSError:  # Pillow cannot read what the PACS sent as an image
            pass
    opened = await mount.trolley.open_instance(reference)
    try:
        if opened.arrival is not None:
            await opened.arrival.wait_for(opened.size)
        return await trio.to_thread.run_sync(_thumbnail_of_file, opened.fd, opened.size, size, limiter=_image_limiter)
    finally:
        mount.trolley.cache.close_for_reading(reference.instance_uid, opened.fd)


def _thumbnail_of_file(fd: int, file_size: int, size: int) -> bytes:
    try:
        dataset = pydicom.dcmread(io.BytesIO(os.pread(fd, file_size, 0)))
        return thumbnail_of_dataset(dataset, size)
    except Exception as exc:  # noqa: BLE001 - any undecodable pixel data is the same failure to the reader
        raise PacsProtocolError(f"no preview can be made of this instance: {type(exc).__name__}: {exc}") from exc
