"""WADO-RS downloader (PS3.18 §10.4): study, series and instance retrieval as multipart/related.

Asks for the stored bytes unchanged (``transfer-syntax=*``); the body is split in the worker
thread that reads it and every part goes straight into the sink, so a series never sits in memory
and a part's file can be read while it arrives (each part's Content-Length gives its size).
"""

from __future__ import annotations

from trolleyfs.backends.base import InstanceSink
from trolleyfs.backends.http import Answer, HttpSession, build_url, checked_uid, loggable
from trolleyfs.backends.multipart import MultipartSplitter, PartConsumer, boundary_of, content_length, media_type
from trolleyfs.errors import PacsProtocolError
from trolleyfs.model import InstanceReference, Reference, SeriesReference

# Pixel data gains little from gzip and costs both ends CPU: ask for none (any sent is decoded).
ACCEPT_DICOM_MULTIPART = {
    "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "Accept-Encoding": "identity",
}



class WadoRS:
    def __init__(self, session: HttpSession, url: str) -> None:
        self.session = session
        self.url = url

    async def fetch(self, reference: Reference, sink: InstanceSink) -> None:
        url = build_url(self.url, _path(reference))
        splitters: list[MultipartSplitter] = []

        def open_body(answer: Answer) -> MultipartSplitter:
            splitter = MultipartSplitter(boundary_of(answer.header("content-type")), _Instances(sink, reference, url))
            splitters.append(splitter)
            return splitter

        await self.session.receive(url, open_body, ACCEPT_DICOM_MULTIPART)
        if not splitters or not splitters[0].parts:
            raise PacsProtocolError(f"WADO-RS {url}: answer has no instances")

    async def rendered(self, reference: InstanceReference, size: int) -> bytes:
        """PS3.18 §10.4.1.1.3 (Retrieve Rendered Instance): a PNG, or failing that a JPEG. Asked
        for one media type at a time: Orthanc 1.10 answers 400 to an Accept header that lists
        two (with or without q values)."""
        url = build_url(self.url, _path(reference) + "/rendered", [("viewport", f"{size},{size}")])
        try:
            response = await self.session.get(url, {"Accept": "image/png"})
        except PacsProtocolError:  # 400, 406: not as PNG
            response = await self.session.get(url, {"Accept": "image/jpeg"})
        kind = response.headers.get("content-type", "").lower()
        if not kind.startswith("image/"):
            raise PacsProtocolError(f"WADO-RS {loggable(url)}: rendered as {kind!r}, not an image")
        return response.content


class _Instances:
    """Each part of the answer into the sink (in the worker thread)."""

    def __init__(self, sink: InstanceSink, reference: Reference, url: str) -> None:
        self._sink = sink
        self._reference = reference
        self._single = isinstance(reference, InstanceReference)
        self._url = url
        self._parts = 0

    def begin(self, headers: dict[str, str]) -> PartConsumer:
        if not media_type(headers).startswith("application/dicom"):
            raise PacsProtocolError(f"WADO-RS {self._url}: part of type {media_type(headers)!r}")
        if self._single and self._parts:
            raise PacsProtocolError(f"WADO-RS {self._url}: more than one part for one instance")
        self._parts += 1
        return self._sink.open_part(self._reference, content_length(headers))


def _path(reference: Reference) -> str:
    path = f"studies/{checked_uid(reference.study_uid)}"
    if isinstance(reference, (SeriesReference, InstanceReference)):
        path += f"/series/{checked_uid(reference.series_uid)}"
    if isinstance(reference, InstanceReference):
        path += f"/instances/{checked_uid(reference.instance_uid)}"
    return path
