"""WADO-URI downloader (PS3.18 §9): one ``requestType=WADO`` request per instance."""

from __future__ import annotations

from trolleyfs.backends.base import InstanceSink, store
from trolleyfs.backends.http import HttpSession, build_url, checked_uid
from trolleyfs.errors import NeedsInstances, PacsProtocolError
from trolleyfs.model import InstanceReference, Reference


class WadoURI:
    def __init__(self, session: HttpSession, url: str) -> None:
        self.session = session
        self.url = url

    async def fetch(self, reference: Reference, sink: InstanceSink) -> None:
        if not isinstance(reference, InstanceReference):
            raise NeedsInstances(f"WADO-URI fetches single instances, not {type(reference).__name__}")
        url = build_url(
            self.url,
            params=[
                ("requestType", "WADO"),
                ("studyUID", checked_uid(reference.study_uid)),
                ("seriesUID", checked_uid(reference.series_uid)),
                ("objectUID", checked_uid(reference.instance_uid)),
                ("contentType", "application/dicom"),
            ],
        )
        async with self.session.stream(url, {"Accept-Encoding": "identity"}) as response:
            content_type = response.headers.get("content-type", "")
            if not content_type.lower().startswith("application/dicom"):
                raise PacsProtocolError(f"WADO-URI {url}: answer of type {content_type!r}, not application/dicom")
            await store(sink, reference, response.aiter_bytes())
