"""WADO-URI downloader (PS3.18 §9): one ``requestType=WADO`` request per instance, its body read
in the worker thread straight into the sink (readable while it arrives, when its size is given)."""

from __future__ import annotations

from trolleyfs.backends.base import InstanceSink
from trolleyfs.backends.http import Answer, HttpSession, build_url, checked_uid
from trolleyfs.backends.multipart import WholeBody, content_length
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

        def open_body(answer: Answer) -> WholeBody:
            content_type = answer.header("content-type")
            if not content_type.lower().startswith("application/dicom"):
                raise PacsProtocolError(f"WADO-URI {url}: answer of type {content_type!r}, not application/dicom")
            encoded = answer.header("content-encoding").strip().lower() not in ("", "identity")
            size = None if encoded else content_length({"content-length": answer.header("content-length")})
            return WholeBody(sink.open_part(reference, size))

        await self.session.receive(url, open_body, {"Accept-Encoding": "identity"})
