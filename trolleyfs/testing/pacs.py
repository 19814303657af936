"""The embedded test PACS: a DICOMweb server on 127.0.0.1 with fault injection and counters.

It serves, from Part-10 files held in memory:

- QIDO-RS (PS3.18 §10.6) at ``/dicom-web``: ``/studies``, ``/series``, ``/instances`` and the
  hierarchical forms, with attribute matching (``*``/``?`` wildcards, case-insensitive names,
  date ranges), ``limit``/``offset``, and 204 No Content for an empty answer;
- WADO-RS (§10.4) at ``/dicom-web``: study, series and instance retrieval as
  ``multipart/related; type="application/dicom"``, streamed like Orthanc does (no
  Content-Length, ``Connection: close``);
- WADO-URI (§9) at ``/wado``;
- MINT study search at ``/mint/studies`` and IHE RAD-69 retrieval at ``/rad69`` (POST), answered
  as :mod:`trolleyfs.testing.pacs_soap` describes, from the same instances, byte-identically.

Tests count requests by kind (``qido``, ``wado-rs``, ``wado-uri``, ``mint``, ``rad69``) and inject
faults: an HTTP error status, a hang, garbage instead of the answer, a body cut off in the middle,
hostile XML, a missing document. ``stop()`` and ``start()`` (on the same port) make it go down and
come back. With ``tokens`` (:mod:`trolleyfs.testing.tokens`) it requires bearer tokens and issues
them; with ``drop_reused_connections`` it closes a kept-alive connection silently when the next
request arrives on it, as servers with a short keep-alive timeout do.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import ssl
import struct
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from trolleyfs.backends.mint_fields import ALLOWED_INCLUDE_FIELDS
from trolleyfs.testing.tokens import TEST_TOKEN_PATH, TOKEN_PATH, TokenIssuer
from trolleyfs.model import SERIES_KEYWORDS, STUDY_KEYWORDS, QueryLevel
from trolleyfs.testing.endpoints import DicomWebEndpoints
from trolleyfs.testing.pacs_soap import (
    XML_BOMB,
    XML_EXTERNAL,
    mint_search_results,
    parse_rad69_request,
    rad69_envelope,
)

log = logging.getLogger(__name__)

_INSTANCE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames",
)
_LEVEL_KEYWORDS = {
    "studies": ("StudyInstanceUID", *sorted(STUDY_KEYWORDS - {"ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                                                              "NumberOfStudyRelatedInstances"})),
    "series": ("StudyInstanceUID", "SeriesInstanceUID", *sorted(SERIES_KEYWORDS - {"NumberOfSeriesRelatedInstances"})),
    "instances": ("StudyInstanceUID", "SeriesInstanceUID", *_INSTANCE_KEYWORDS),
}
_PERSON_NAME_KEYWORDS = {"PatientName", "ReferringPhysicianName"}
_CHUNK = 256 * 1024


@dataclass
class StoredInstance:
    data: bytes
    header: Dataset

    def value(self, keyword: str) -> str:
        return str(self.header.get(keyword, "") or "")


@dataclass
class Fault:
    kind: str
    """Request kind it applies to: qido, wado-rs, wado-uri, mint, rad69, or * for all."""
    action: str
    """status | echo (an error status whose body quotes the request) | hang | garbage | empty |
    truncate | stall | wrong-instance | not-dicom | kill | xml-bomb | xml-external (MINT, RAD-69) |
    missing (RAD-69: one document reported missing) | trickle (multipart: midway, one byte every
    50 ms until released) | omit-first, forge (WADO-RS study and series answers: the first instance
    left out; another instance's UID added with other bytes)"""
    status: int = 503
    retry_after: int | None = None
    """With action status: the Retry-After header to send."""
    remaining: int | None = None
    """How many requests it still spoils; None means until cleared."""


@dataclass
class Faults:
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
    """Set to let hanging requests go (they also give up after 120 s)."""
    stalled: threading.Event = field(default_factory=threading.Event)
    """Set when a "stall" answer has sent its half part and goes silent."""

    def add(
        self, kind: str, action: str, *, status: int = 503, count: int | None = None, retry_after: int | None = None
    ) -> None:
        with self._lock:
            self._faults.append(Fault(kind, action, status=status, retry_after=retry_after, remaining=count))
        self.released.clear()

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
        self.released.set()

    def take(self, kind: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in (kind, "*"):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None


class EmbeddedPacs(DicomWebEndpoints):
    def __init__(self, files: Iterable[bytes] = (), tls: ssl.SSLContext | None = None) -> None:
        self.instances: dict[str, StoredInstance] = {}
        self.counts: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        """Instances sent whole or in part by WADO-RS and WADO-URI, by SOPInstanceUID."""
        self.faults = Faults()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self.http_port = 0
        self.tls = tls
        """Serve https:// with this server-side context (tests of ca_bundle and client certificates)."""
        self.repository_id = "1.3.6.1.4.1000"
        """The RAD-69 RepositoryUniqueId it answers for (trolleyfs's default)."""
        self.qido_page_cap: int | None = None
        """Most results one QIDO-RS page holds, whatever ``limit`` asks (servers cap their pages)."""
        self.qido_cap_warning = True
        """Whether a page cut by ``qido_page_cap`` says so with ``Warning: 299`` (PS3.18 8.3.4.4);
        False is a server that cuts silently."""
        self.qido_pages_end_at: int | None = None
        """Answer no results from this offset on (a PACS that stops paging early)."""
        self.qido_ignores_offset = False
        """Answer every page from the first result (a PACS that ignores ``offset``)."""
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []
        """(kind, query parameters) of every QIDO-RS and MINT request, in order."""
        self.tokens: TokenIssuer | None = None
        """Require a bearer token from this issuer on every request, and serve its token endpoint."""
        self.drop_reused_connections = False
        """Close a connection without an answer when a second request arrives on it."""
        self.dropped_connections = 0
        self.refuse_return_fields = False
        """Answer HTTP 400 to any QIDO-RS ``includefield`` or MINT ``IncludeFields`` (a strict server)."""
        if tls is not None:
            self.scheme = "https"
        for data in files:
            self.add(data)

    def add(self, data: bytes, header: Dataset | None = None) -> None:
        """Store a Part-10 file; ``header``, its dataset when the caller has it, saves a parse."""
        if header is None:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        self.instances[str(header.SOPInstanceUID)] = StoredInstance(data, header)

    def count(self, kind: str) -> int:
        with self._lock:
            return self.counts[kind]

    def _counted(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def _sending(self, instances: Iterable[StoredInstance]) -> None:
        with self._lock:
            self.sent.update(instance.value("SOPInstanceUID") for instance in instances)

    def start(self) -> EmbeddedPacs:
        handler = type("Handler", (_Handler,), {"pacs": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.http_port), handler)
        self._server.daemon_threads = True
        self.http_port = self._server.server_address[1]
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="embedded-pacs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down like a stopped server: stop listening and drop every open connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> EmbeddedPacs:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.faults.clear()
        self.stop()

    # --- answers ---------------------------------------------------------------------------------

    def matching(self, filters: dict[str, str]) -> list[StoredInstance]:
        return [instance for instance in self.instances.values() if _matches(instance, filters)]


def _matches(instance: StoredInstance, filters: dict[str, str]) -> bool:
    for keyword, wanted in filters.items():
        if keyword == "ModalitiesInStudy":
            continue  # checked per study by the caller
        actual = instance.value(keyword)
        if keyword.endswith("Date") and "-" in wanted:
            low, _, high = wanted.partition("-")
            if (low and actual < low) or (high and actual > high):
                return False
        elif "*" in wanted or "?" in wanted:
            pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in wanted)
            if not re.fullmatch(pattern, actual, re.IGNORECASE if keyword in _PERSON_NAME_KEYWORDS else 0):
                return False
        elif "\\" in wanted and keyword.endswith("UID"):
            if actual not in wanted.split("\\"):
                return False
        elif actual != wanted:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    pacs: EmbeddedPacs
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.pacs._lock:
            self.pacs._connections.add(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError):  # the client went away: nothing to answer
            self.close_connection = True

    def finish(self) -> None:
        with self.pacs._lock:
            self.pacs._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("embedded PACS: " + format, *args)

    requests_served = 0

    def _turned_away(self) -> bool:
        """Whether this request gets no answer (a dropped connection) or a 401."""
        if self.pacs.drop_reused_connections and self.requests_served:
            with self.pacs._lock:
                self.pacs.dropped_connections += 1
            self.close_connection = True
            return True
        self.requests_served += 1
        tokens = self.pacs.tokens
        if tokens is None or tokens.accepts(self.headers.get("Authorization", "")):
            return False
        self._send(401, "text/plain", b"invalid token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return True

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        url = urlsplit(self.path)
        segments = [part for part in url.path.split("/") if part]
        params = parse_qsl(url.query, keep_blank_values=True)
        if url.path == TEST_TOKEN_PATH and self.pacs.tokens is not None:
            return self._send(200, "application/json", self.pacs.tokens.test_token(("format", "text") in params))
        if self._turned_away():
            return None
        if segments[:1] == ["wado"]:
            kind = "wado-uri"
        elif segments == ["mint", "studies"]:
            kind = "mint"
        elif segments[:1] == ["dicom-web"] and segments[-1:] and segments[-1] in ("studies", "series", "instances"):
            kind = "qido"
        elif segments[:1] == ["dicom-web"]:
            kind = "wado-rs"
        else:
            return self._error(404, "unknown resource")
        if kind in ("qido", "mint"):
            with self.pacs._lock:
                self.pacs.requests.append((kind, params))
        corruption = self._fault_answered(kind)
        if corruption is None:
            return None
        if kind == "qido":
            return self._qido(segments[1:], params)
        if kind == "mint":
            return self._mint(params, corruption)
        if kind == "wado-rs":
            return self._wado_rs(segments[1:], corruption)
        return self._wado_uri(dict(params), corruption)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if urlsplit(self.path).path == TOKEN_PATH and self.pacs.tokens is not None:
            form = dict(parse_qsl(body.decode("ascii", "replace")))
            status, answer = self.pacs.tokens.token_endpoint(self.headers.get("Authorization", ""), form)
            return self._send(status, "application/json", json.dumps(answer).encode())
        if self._turned_away():
            return None
        if urlsplit(self.path).path.rstrip("/") != "/rad69":
            return self._error(404, "unknown resource")
        corruption = self._fault_answered("rad69")
        if corruption is None:
            return None
        return self._rad69(body, corruption)

    def _fault_answered(self, kind: str) -> str | None:
        """Count the request and apply a fault: None when the fault was the whole answer,
        otherwise the corruption (maybe "") the answer must carry."""
        self.pacs._counted(kind)
        fault = self.pacs.faults.take(kind)
        if fault is None:
            return ""
        xml_type = "application/soap+xml" if kind == "rad69" else "application/xml"
        if fault.action == "status":
            self._error(fault.status, "injected fault", fault.retry_after)
        elif fault.action == "echo":  # as servers do: "invalid value PatientName=DOE^JOHN"
            self._error(fault.status, f"cannot answer {urllib.parse.unquote(self.path)}")
        elif fault.action == "hang":
            self.pacs.faults.released.wait(120)
            self.close_connection = True
        elif fault.action in ("xml-bomb", "xml-external"):
            self._send(200, xml_type, XML_BOMB if fault.action == "xml-bomb" else XML_EXTERNAL)
        elif fault.action == "garbage" and kind in ("qido", "wado-rs", "wado-uri"):
            body = b'[{"0020000D": {"vr": "UI", "Val' if kind == "qido" else b"<html>oops"
            self._send(200, "application/dicom+json" if kind == "qido" else "multipart/related", body)
        elif fault.action == "empty":
            content_type = {"qido": "application/dicom+json", "wado-uri": "application/dicom"}.get(kind, xml_type)
            if kind == "wado-rs":
                content_type = 'multipart/related; type="application/dicom"; boundary=b'
            self._send(200, content_type, b"--b--\r\n" if kind == "wado-rs" else b"")
        else:
            return fault.action
        return None

    # --- QIDO-RS ----------------------------------------------------------------------------------

    def _qido(self, segments: list[str], params: list[tuple[str, str]]) -> None:
        level = segments[-1]
        filters: dict[str, str] = {}
        path_uids = dict(zip(("StudyInstanceUID", "SeriesInstanceUID"), segments[1:-1:2]))
        limit, offset = None, 0
        for key, value in params:
            if key == "limit":
                limit = int(value)
            elif key == "offset":
                offset = int(value)
            elif key == "includefield":
                if self.pacs.refuse_return_fields:
                    return self._error(400, "includefield not supported")
            elif key == "fuzzymatching":
                continue
            elif value:
                filters[_keyword(key)] = value
        filters.update(path_uids)
        instances = self.pacs.matching(filters)
        records = _records(level, instances, filters.get("ModalitiesInStudy"))
        if self.pacs.qido_ignores_offset:
            offset = 0
        if self.pacs.qido_pages_end_at is not None:
            records = records if offset < self.pacs.qido_pages_end_at else []
        cap = self.pacs.qido_page_cap
        size = min(limit, cap) if limit is not None and cap else (limit if limit is not None else cap)
        page = records[offset : offset + size if size is not None else None]
        cut = cap is not None and (limit is None or limit > cap) and len(records) - offset > cap
        warning = {"Warning": "299 trolleyfs-test: The number of results exceeded the maximum supported by the "
                              "server. Additional results can be requested."} if cut and self.pacs.qido_cap_warning else {}
        if not page:
            return self._send(204, "application/dicom+json", b"", headers=warning)
        self._send(200, "application/dicom+json", json.dumps(page).encode(), headers=warning)

    # --- WADO-RS ----------------------------------------------------------------------------------

    def _corrupted(self, instance: StoredInstance, corruption: str) -> bytes:
        if corruption == "wrong-instance":
            return next(other.data for uid, other in self.pacs.instances.items() if other is not instance)
        if corruption == "not-dicom":
            return bytes(range(256)) * (len(instance.data) // 256 + 1)
        return instance.data

    def _wado_rs(self, segments: list[str], corruption: str) -> None:
        accept = self.headers.get("Accept", "")
        if "multipart/related" not in accept or "application/dicom" not in accept:
            return self._error(406, "WADO-RS here answers multipart/related; type=application/dicom only")
        names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        if segments[0::2] != ["studies", "series", "instances"][: len(segments[0::2])] or len(segments) % 2:
            return self._error(400, "not a WADO-RS retrieve path")
        instances = self.pacs.matching(dict(zip(names, segments[1::2])))
        if not instances:
            return self._error(404, "no such study, series or instance")
        if corruption == "omit-first" and len(instances) > 1:  # one it "cannot send in that syntax"
            instances = instances[1:]
        self.pacs._sending(instances)
        parts = [("Content-Type: application/dicom", self._corrupted(instance, corruption)) for instance in instances]
        if corruption == "forge" and len(instances) > 1:  # plant another instance's UID, other bytes
            outsider = next(i for i in self.pacs.instances.values() if i not in instances)
            parts.append(("Content-Type: application/dicom", outsider.data[:-1] + bytes([outsider.data[-1] ^ 0xFF])))
        self._stream_multipart('multipart/related; type="application/dicom"', parts, corruption)

    def _stream_multipart(self, content_type: str, parts: list[tuple[str, bytes]], corruption: str) -> None:
        """Send ``(part headers, part bytes)`` as one multipart body, streamed like Orthanc (no
        Content-Length, ``Connection: close``); "truncate", "kill", "stall" and "trickle" break it
        midway."""
        boundary = uuid.uuid4().hex
        self.send_response(200)
        self.send_header("Content-Type", f"{content_type}; boundary={boundary}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        breaking_point = len(parts) // 2
        for index, (headers, data) in enumerate(parts):
            self.wfile.write(f"--{boundary}\r\n{headers}\r\nContent-Length: {len(data)}\r\n\r\n".encode())
            if corruption == "trickle" and index == breaking_point:
                for byte in data:  # just often enough never to trip a per-read timeout
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if self.pacs.faults.released.wait(0.05):
                        return
            if corruption in ("truncate", "kill", "stall") and index == breaking_point:
                self.wfile.write(data[: len(data) // 2])
                if corruption == "stall":  # half a part, then silence until released
                    self.wfile.flush()
                    self.pacs.faults.stalled.set()
                    self.pacs.faults.released.wait(120)
                if corruption == "kill":  # the server dies: the connection is reset, not closed
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            self._write_chunked(data)
            self.wfile.write(b"\r\n")
        self.wfile.write(f"--{boundary}--\r\n".encode())

    def _write_chunked(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            self.wfile.write(view[start : start + _CHUNK])

    # --- WADO-URI ---------------------------------------------------------------------------------

    def _wado_uri(self, params: dict[str, str], corruption: str) -> None:
        if params.get("requestType") != "WADO":
            return self._error(400, "requestType must be WADO")
        if params.get("contentType") != "application/dicom":
            return self._error(406, "only contentType=application/dicom is served")
        instance = self.pacs.instances.get(params.get("objectUID", ""))
        if instance is None or instance.value("SeriesInstanceUID") != params.get("seriesUID"):
            return self._error(404, "no such instance")
        self.pacs._sending([instance])
        data = self._corrupted(instance, corruption)
        if corruption in ("truncate", "kill"):
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self._send(200, "application/dicom", data)

    # --- MINT and RAD-69 ------------------------------------------------------------------------

    def _mint(self, params: list[tuple[str, str]], corruption: str) -> None:
        filters: dict[str, str] = {}
        level, limit, low, high = "STUDY", 0, "", ""
        fields: list[str] = []
        for key, value in params:
            if key == "QueryLevel":
                level = value.upper()
            elif key == "limit":
                limit = int(value)
            elif key == "min_study_date":
                low = value
            elif key == "max_study_date":
                high = value
            elif key == "IncludeFields":
                fields = [name for name in value.split(",") if name]
            elif value:
                filters[key] = value
        if level not in ("STUDY", "SERIES", "INSTANCE"):
            return self._error(400, f"unknown QueryLevel {level!r}")
        if fields and self.pacs.refuse_return_fields:
            return self._error(400, "IncludeFields not supported")
        if refused := [name for name in fields if name not in ALLOWED_INCLUDE_FIELDS[QueryLevel(level)]]:
            return self._error(400, f"invalid IncludeFields for QueryLevel {level}: {', '.join(refused)}")
        if low or high:
            filters["StudyDate"] = f"{low}-{high}"
        studies = _mint_tree(self.pacs.matching(filters), level, filters.get("ModalitiesInStudy"))
        body = mint_search_results(studies[:limit] if limit else studies)
        self._send(200, "application/xml", body[: len(body) // 2] if corruption == "garbage" else body)

    def _rad69(self, body: bytes, corruption: str) -> None:
        try:
            request = parse_rad69_request(body)
        except Exception as exc:  # noqa: BLE001 - any unreadable request is the client's fault
            return self._error(400, f"not a RetrieveImagingDocumentSetRequest: {exc}")
        found: list[str] = []
        missing: dict[str, str] = {}
        for uid in request.document_uids:
            instance = self.pacs.instances.get(uid)
            if request.repository_ids != {self.pacs.repository_id}:
                missing[uid] = "XDSUnknownRepositoryId"
            elif instance is None or instance.value("SeriesInstanceUID") != request.series_uid:
                missing[uid] = "XDSMissingDocument"
            else:
                found.append(uid)
        if corruption == "missing" and found:
            missing[found.pop(0)] = "XDSMissingDocument"
        content_ids = {uid: f"{uuid.uuid4().hex}@trolleyfs.test" for uid in found}
        envelope = rad69_envelope(self.pacs.repository_id, content_ids, missing)
        if corruption == "garbage":
            envelope = envelope[: len(envelope) // 2]
        if not found:
            return self._send(200, "application/soap+xml; charset=utf-8", envelope)
        root = ("Content-Type: application/xop+xml; charset=UTF-8; type=\"application/soap+xml\"\r\n"
                "Content-Transfer-Encoding: binary\r\nContent-ID: <root@trolleyfs.test>")
        attachments = [
            (f"Content-Type: application/dicom\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{content_ids[uid]}>",
             self._corrupted(self.pacs.instances[uid], corruption))
            for uid in reversed(found)
        ]
        self._stream_multipart(
            'multipart/related; type="application/xop+xml"; start="<root@trolleyfs.test>"; '
            'start-info="application/soap+xml"', [(root, envelope), *attachments], corruption,
        )

    # --- plumbing ---------------------------------------------------------------------------------

    def _send(
        self, status: int, content_type: str, body: bytes, retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._write_chunked(body)

    def _error(self, status: int, message: str, retry_after: int | None = None) -> None:
        self._send(status, "text/plain", message.encode(), retry_after)


def _keyword(key: str) -> str:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or key
    return key


def _records(level: str, instances: list[StoredInstance], modalities: str | None) -> list[dict]:
    """DICOM JSON answers at ``level``: one per distinct study, series or instance."""
    uid_keyword = {"studies": "StudyInstanceUID", "series": "SeriesInstanceUID", "instances": "SOPInstanceUID"}[level]
    groups: dict[str, list[StoredInstance]] = {}
    for instance in sorted(instances, key=lambda i: (i.value("StudyInstanceUID"), i.value("SeriesInstanceUID"))):
        groups.setdefault(instance.value(uid_keyword), []).append(instance)
    records = []
    for members in groups.values():
        answer = Dataset()
        for keyword in _LEVEL_KEYWORDS[level]:
            if keyword in members[0].header:
                setattr(answer, keyword, members[0].header.get(keyword))
        if level == "studies":
            in_study = sorted({m.value("Modality") for m in members})
            if modalities and modalities not in in_study:
                continue
            answer.ModalitiesInStudy = in_study
            answer.NumberOfStudyRelatedSeries = len({m.value("SeriesInstanceUID") for m in members})
            answer.NumberOfStudyRelatedInstances = len(members)
        elif level == "series":
            answer.NumberOfSeriesRelatedInstances = len(members)
        records.append(answer.to_json_dict())
    return records


def _mint_tree(instances: list[StoredInstance], level: str, modalities: str | None) -> list:
    """Studies -> series -> instances, each as keyword -> text, down to ``level``."""
    studies: dict[str, dict[str, list[StoredInstance]]] = {}
    for instance in sorted(instances, key=lambda i: (i.value("StudyInstanceUID"), i.value("SeriesInstanceUID"),
                                                     int(i.value("InstanceNumber") or 0))):
        studies.setdefault(instance.value("StudyInstanceUID"), {}).setdefault(
            instance.value("SeriesInstanceUID"), []).append(instance)
    tree = []
    for series_map in studies.values():
        members = [member for group in series_map.values() for member in group]
        in_study = sorted({member.value("Modality") for member in members})
        if modalities and modalities not in in_study:
            continue
        study = _texts(members[0], _LEVEL_KEYWORDS["studies"])
        study["ModalitiesInStudy"] = "\\".join(in_study)
        series_list = []
        if level != "STUDY":
            for group in series_map.values():
                instances_out = [_texts(i, _LEVEL_KEYWORDS["instances"][2:]) for i in group] if level == "INSTANCE" else []
                series_list.append((_texts(group[0], _LEVEL_KEYWORDS["series"][1:]), instances_out))
        tree.append((study, series_list))
    return tree


def _texts(instance: StoredInstance, keywords: Iterable[str]) -> dict[str, str]:
    texts = {}
    for keyword in keywords:
        value = instance.header.get(keyword)
        if value is None:
            continue
        texts[keyword] = "\\".join(map(str, value)) if isinstance(value, (list, tuple, MultiValue)) else str(value)
    return texts
