"""WADO-RS downloader (PS3.18 §10.4): study, series and instance retrieval as multipart/related.

Asks for the stored bytes unchanged (``transfer-syntax=*``) and streams every part straight into
the sink, so a series never sits in memory.
"""

from __future__ import annotations

from trolleyfs.backends.base import InstanceSink, store
from trolleyfs.backends.http import HttpSession, build_url, checked_uid
from trolleyfs.backends.multipart import MultipartReader, boundary_of
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
        single = isinstance(reference, InstanceReference)
        parts_seen = 0
        async with self.session.stream(url, ACCEPT_DICOM_MULTIPART) as response:
            reader = MultipartReader(response.aiter_bytes(), boundary_of(response.headers.get("content-type", "")))
            async for part in reader.parts():
                if not part.content_type.startswith("application/dicom"):
                    raise PacsProtocolError(f"WADO-RS {url}: part of type {part.content_type!r}")
                if single and parts_seen:
                    raise PacsProtocolError(f"WADO-RS {url}: more than one part for one instance")
                await store(sink, reference, part.content)
                parts_seen += 1
        if not parts_seen:
            raise PacsProtocolError(f"WADO-RS {url}: answer has no instances")


def _path(reference: Reference) -> str:
    path = f"studies/{checked_uid(reference.study_uid)}"
    if isinstance(reference, (SeriesReference, InstanceReference)):
        path += f"/series/{checked_uid(reference.series_uid)}"
    if isinstance(reference, InstanceReference):
        path += f"/instances/{checked_uid(reference.instance_uid)}"
    return path
