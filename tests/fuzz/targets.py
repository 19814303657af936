"""Fuzz targets: one per parser that reads bytes from a PACS or a user, with its strategy.

A target takes one drawn *spec* (plain tuples, lists, dicts, bytes, strings and numbers, so that
the runner can shrink it), renders it into the parser's real input (bytes on the wire, a header,
a file, an option string, a folder name) and calls the parser the way trolleyfs does. Then:

- returning, or raising a :class:`~trolleyfs.errors.TrolleyError`, is fine: that is the clear
  error every parser is meant to raise for bad input;
- raising anything else is a failure, and so is taking longer than the runner's time limit;
- :class:`Mismatch` is raised by the target itself when a parser accepts its input but reads it
  wrong (a query name that does not round-trip, a valid multipart body read differently).

Valid inputs come from the renderers trolleyfs already has (the embedded PACS's MINT and RAD-69
answers, pydicom's DICOM JSON shapes) and are then mutated; random ones are mixed in. Sizes stay
small: the bugs are in structure, not in volume, and small cases run many times per second.

``TARGETS`` is the registry the runner and the CI test use.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import string
import struct
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from xml.etree import ElementTree
from xml.etree.ElementTree import Element, SubElement

import httpx
import trio
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import decode as pynetdicom_decode

from trolleyfs.backends.dimse import record_from_identifier
from trolleyfs.backends.mint import parse_study_search_results
from trolleyfs.backends.multipart import MultipartSplitter, boundary_of
from trolleyfs.backends.qido_rs import QidoRS
from trolleyfs.backends.rad69 import SOAP, XDS, XOP, REGREP, Rad69
from trolleyfs.config import Config, join_mount_options, load_config, parse_mount_options
from trolleyfs.errors import TrolleyError
from trolleyfs.fs.dicom import estimated_size
from trolleyfs.fs.names import patient_dir_name, study_time, unique_names
from trolleyfs.fs.query_names import KEYS as QUERY_KEYS
from trolleyfs.fs.query_names import parse_query_name, query_name
from trolleyfs.fs.settings import Naming
from trolleyfs.fs.sidecars import dicom_json, render_json, text_of, xattr_values
from trolleyfs.model import (
    LISTING_FIELDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    InstanceReference,
    Query,
    QueryLevel,
    SeriesReference,
    build_studies,
)
from trolleyfs.mount_helper import split_options
from trolleyfs.testing.pacs_soap import XML_BOMB, XML_EXTERNAL, mint_search_results, rad69_envelope


class Mismatch(AssertionError):
    """A parser accepted its input and got it wrong."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)


class Target(NamedTuple):
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], None]
    """Render a spec and parse it; raises what the parser raises (or Mismatch)."""
    show: Callable[[Any], Any]
    """The parser's real input for a spec, for failure reports."""


# --- shared pieces -------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", " ", "\0", "\ud800", "\udcff", "caf\udce9", "%", "%2", "%zz", "%2f", "\\", "a\\b", "*", "?", "^",
    "=", "&", ",", "\\,", "x\\", "\n", "\r\n", "..", "../x", "/", "9" * 400, "1" * 4301, "-1", "1e400", "inf",
    "nan", "0x10", " 1 ", "١٢", "ǅ", "ß", "İ", "\u2028", "\ufeff", "€", "𝔘", "{", "}", "<", "&amp;", "]]>",
]
TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(exclude_categories=()), max_size=6),  # lone surrogates included
    st.sampled_from(HOSTILE_TEXT),
)
_XML_CHARACTERS = st.characters(exclude_categories=("Cs", "Cc"))
XML_TEXT = st.one_of(
    st.text(_XML_CHARACTERS, max_size=12),
    st.sampled_from([text for text in HOSTILE_TEXT if not re.search("[\0-\x1f\ud800-\udfff]", text)]),
)
"""Text XML can carry (no control characters or surrogates): answers with the others are tried
by mutation (EDITS) and as random bytes."""
SPICE = [
    b"\r\n", b"\n", b"\r", b"--", b"\0", b"\xff", b"\xc3", b"\xed\xa0\x80", b"<", b">", b"&", b'"', b"]]>",
    b"<!DOCTYPE a [<!ENTITY e 'x'>]>", b"&e;", b"&#0;", b"&#xD800;", b"\\", b"{", b"}", b"[", b"]", b":", b",",
    b"1e999", b"-0", b"NaN", b"\xef\xbb\xbf", b"\xfe\xff", b"1" * 5000,
]
EDITS = st.one_of(
    st.just([]),
    st.just([]),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 16), st.one_of(st.binary(max_size=6), st.sampled_from(SPICE))),
             min_size=1, max_size=3),
)
"""Byte edits (position, bytes cut, bytes put in) that mutate a rendered valid input (two times in three, none)."""


class Kind(str):
    """The tag naming which variant a spec is (``("raw", ...)``); the runner's shrinker leaves it."""


def kind(name: str) -> st.SearchStrategy[Kind]:
    return st.just(Kind(name))


def apply_edits(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for position, cut, insert in edits:
        at = position % (len(data) + 1)
        data = data[:at] + insert + data[at + max(cut, 0) :]
    return data


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each ``weight`` times as likely (one_of picks its branches evenly)."""
    return st.one_of(*(strategy for weight, strategy in choices for _ in range(weight)))


def pick(options: tuple[Any, ...] | list[Any], index: int) -> Any:
    """``options[index]`` for any int a shrinker may leave."""
    return options[index % len(options)]


ASYNC_DEADLINE = 1.5
"""Seconds a target may wait under trio (the runner sets it below its time limit, so that a
case stuck waiting ends with trio.TooSlowError rather than a signal inside trio's scheduler)."""


def run_async(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``make()`` under trio, as trolleyfs runs it, within ASYNC_DEADLINE."""

    async def bounded() -> Any:
        with trio.fail_after(ASYNC_DEADLINE):
            return await make()

    return trio.run(bounded)


def chunks_of(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` as a network would hand it over: chunks of ``sizes`` (cycled; 0 is an empty chunk)."""
    if not sizes:
        yield data
        return
    at = turn = 0
    while at < len(data):
        size = sizes[turn % len(sizes)]
        turn += 1
        if size <= 0:
            yield b""
            size = 1
        yield data[at : at + size]
        at += size


CHUNK_SIZES = st.lists(st.integers(0, 70), max_size=6)


def argv_text(text: str) -> str:
    """``text`` as it can reach trolleyfs on a command line or in the environment: bytes (no NUL)
    decoded by Python with surrogateescape."""
    return os.fsdecode(text.encode("utf-8", "surrogatepass").replace(b"\0", b""))


def header_text(raw: str) -> str:
    """A header value as httpx hands it to trolleyfs: sent as UTF-8 bytes (a PACS may), decoded
    as httpx decodes them (ASCII, else UTF-8, else Latin-1). CR, LF and NUL cannot be in one."""
    data = raw.encode("utf-8", "surrogatepass").translate(None, b"\r\n\0")
    return httpx.Headers([(b"content-type", data)]).get("content-type", "")


class FakeHttp:
    """The HttpSession methods the backends call, answering every request with one response."""

    def __init__(self, content_type: str, body: bytes, status: int = 200, sizes: list[int] | None = None,
                 extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
        self.headers = [(b"content-type", content_type.encode("utf-8", "surrogatepass")), *extra_headers]
        self.body, self.status, self.sizes = body, status, sizes or []

    async def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.Response(self.status, content=self.body, headers=self.headers)

    async def receive(self, url: str, open_body: Any, headers: Any = None, method: str = "GET", content: Any = None) -> None:
        """As HttpSession.receive, but feeding the body on the event loop's thread."""
        answer = _Answer(self.status, httpx.Headers(self.headers))
        consumer = open_body(answer)
        try:
            for chunk in chunks_of(self.body, self.sizes):
                consumer.feed(memoryview(chunk))
            consumer.close()
        except BaseException:
            consumer.abort()
            raise


class _Answer:
    def __init__(self, status: int, headers: httpx.Headers) -> None:
        self.status, self._headers = status, headers

    def header(self, name: str) -> str:
        return self._headers.get(name, "")


class RecordingSink:
    """An InstanceSink keeping what it is given."""

    def __init__(self) -> None:
        self.instances: list[bytes] = []

    @contextlib.asynccontextmanager
    async def receive(self, expected: Any = None) -> Any:
        writer = _Writer()
        yield writer
        self.instances.append(bytes(writer.data))

    def open_part(self, expected: Any, size: int | None) -> Any:
        sink, data = self, bytearray()

        class Part:
            def write(self, piece: memoryview) -> None:
                data.extend(piece)

            def end(self) -> None:
                sink.instances.append(bytes(data))

            def abort(self) -> None:
                data.clear()

        return Part()


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


LEVELS = tuple(QueryLevel)
UIDS = st.one_of(st.sampled_from(["1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2", "0.0"]), TEXT)
XML_UIDS = st.one_of(st.sampled_from(["1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2", "0.0"]), XML_TEXT)
ASKED_UIDS = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
"""The instances a RAD-69 request names; answers draw document UIDs mostly from these."""
_SEARCH_KEYWORDS = sorted(
    STUDY_KEYWORDS | SERIES_KEYWORDS | {"SOPInstanceUID", "SpecificCharacterSet", *LISTING_FIELDS[QueryLevel.INSTANCE]}
)
_KNOWN_TAG_TEXTS = st.sampled_from([f"{tag_for_keyword(keyword):08X}" for keyword in _SEARCH_KEYWORDS])
TAG_TEXTS = st.one_of(
    _KNOWN_TAG_TEXTS, _KNOWN_TAG_TEXTS, _KNOWN_TAG_TEXTS, _KNOWN_TAG_TEXTS,  # mostly the tags searches return
    st.integers(0, 0xFFFFFFFF).map("{:08X}".format),
    st.sampled_from(["", "0x10", "-1", "-00000001", " 0020000D ", "0020000d", "FFFFFFFFF", "100000000", "1_0",
                     "٠٠٢٠٠٠٠D", "zz", "7FE00010", "00091010", "60000010", "FFFEE000"]),
    TEXT,
)
"""Tag texts as DICOM JSON and MINT carry them: known, random, malformed, out of range."""


# --- 1. multipart/related (WADO-RS, RAD-69 MTOM) -----------------------------------------------------

_BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=? "
BOUNDARIES = st.one_of(
    st.text(_BCHARS, min_size=1, max_size=12).map(lambda b: b.rstrip() or "b"),
    st.sampled_from(["b", "----=_Part_0_1", "MIMEBoundary_urn:uuid:1", "--", "-", "x" * 70]),
)
_LATIN1_LINE = st.characters(max_codepoint=255, exclude_characters="\r\n")
HEADER_NAMES = st.one_of(
    st.sampled_from(["Content-Type", "Content-ID", "Content-Transfer-Encoding", "Content-Length", "content-id"]),
    st.text(st.characters(max_codepoint=255, exclude_characters=":\r\n"), max_size=8),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(["application/dicom", 'application/xop+xml; type="application/soap+xml"', "<a@x>", "binary"]),
    st.text(_LATIN1_LINE, max_size=12),
)
PARTS = st.lists(
    st.tuples(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3),
              st.one_of(st.binary(max_size=48), st.sampled_from([b"", b"\r", b"\r\n", b"--", b"\n--b", b"\r\n--b--"]))),
    min_size=1, max_size=4,
)
MULTIPART_FORMS = st.tuples(
    BOUNDARIES, PARTS,
    st.sampled_from([True, True, False]),  # CRLF line ends (else bare LF)
    st.one_of(st.just(b""), st.binary(max_size=12)),  # preamble
    st.sampled_from([b"", b" ", b"\t "]),  # transport padding after each delimiter
    st.sampled_from([True, True, True, False]),  # closing delimiter
    st.one_of(st.just(b""), st.binary(max_size=8)),  # epilogue
)
"""A multipart body as a form: (boundary, [(headers, content)], crlf, preamble, padding, closed, epilogue)."""


def multipart_body(form: tuple) -> bytes:
    boundary, parts, crlf, preamble, padding, closed, epilogue = form
    newline = b"\r\n" if crlf else b"\n"
    dash_boundary = b"--" + boundary.encode("latin-1", "replace")
    out = [preamble + newline] if preamble else []
    for headers, content in parts:
        out.append(dash_boundary + padding + newline)
        out += [f"{name}: {value}".encode("latin-1", "replace") + newline for name, value in headers]
        out += [newline, content, newline]
    if closed:
        out.append(dash_boundary + b"--" + newline + epilogue)
    return b"".join(out)


def expected_parts(form: tuple) -> list[tuple[dict[str, str], bytes]] | None:
    """What a correct reader makes of a valid CRLF form, or None when the form is not one a
    reader can be held to (a boundary inside a content or the preamble, bare LFs, no end)."""
    boundary, parts, crlf, preamble, _, closed, _ = form
    delimiter = b"\n--" + boundary.encode("latin-1", "replace")
    if not (crlf and closed and boundary.isascii()):
        return None
    lead = b"\r\n" + (preamble + b"\r\n" if preamble else b"")
    if (lead + delimiter[1:]).find(delimiter) != len(lead) - 1:
        return None
    expected = []
    for headers, content in parts:
        if (content + b"\r" + delimiter).find(delimiter) != len(content) + 1:
            return None
        expected.append(({name.strip().lower(): value.strip() for name, value in headers}, content))
    return expected


CONTENT_TYPES = (
    'multipart/related; type="application/dicom"; boundary="{}"',
    'multipart/related; boundary="{}"; type="application/xop+xml"; start="<root@x>"; start-info="application/soap+xml"',
    'MULTIPART/RELATED;BOUNDARY="{}"',
    "multipart/related; boundary={}",
    "multipart/related; boundary*=utf-8''{}",
    'application/dicom; boundary="{}"',
)
_QUOTED = 3
"""CONTENT_TYPES before this index quote the boundary: boundary_of must give it back exactly."""
MULTIPART_SPECS = st.tuples(
    weighted((4, st.tuples(kind("template"), st.integers(0, len(CONTENT_TYPES) - 1))),
             (1, st.tuples(kind("any boundary"), st.integers(0, len(CONTENT_TYPES) - 1), TEXT)),
             (1, st.tuples(kind("text"), TEXT))),
    weighted((3, st.tuples(kind("form"), MULTIPART_FORMS, EDITS)), (1, st.tuples(kind("raw"), st.binary(max_size=300)))),
    CHUNK_SIZES,
    st.lists(st.integers(-1, 3), max_size=4),  # chunks read of each part before the next (-1: all)
)


def _multipart_input(spec: tuple) -> tuple[str, bytes]:
    content_type, body_spec, _, _ = spec
    form = body_spec[1] if body_spec[0] == "form" else None
    body = apply_edits(multipart_body(form), body_spec[2]) if form else body_spec[1]
    if content_type[0] == "template":
        raw = pick(CONTENT_TYPES, content_type[1]).format(form[0] if form else "b")
    elif content_type[0] == "any boundary":
        raw = pick(CONTENT_TYPES, content_type[1]).format(content_type[2])
    else:
        raw = content_type[1]
    return header_text(raw), body


def _read_parts(content_type: str, body: bytes, sizes: list[int], reads: list[int]) -> list[tuple[dict, bytes | None]]:
    """Split ``body`` fed in chunks of ``sizes``; a part whose ``reads`` entry is not -1 has its
    content ignored by its consumer (None), which must not put the parser out of step."""
    got: list[tuple[dict, bytearray, int]] = []

    class Handler:
        def begin(self, headers: dict[str, str]):
            data = bytearray()
            got.append((dict(headers), data, pick(reads, len(got)) if reads else -1))
            keep = got[-1][2] < 0

            class Part:
                def write(self, piece: memoryview) -> None:
                    if keep:
                        data.extend(piece)

                def end(self) -> None:
                    pass

                def abort(self) -> None:
                    pass

            return Part()

    splitter = MultipartSplitter(boundary_of(content_type), Handler())
    for chunk in chunks_of(body, sizes):
        splitter.feed(chunk)
    splitter.close()
    return [(headers, bytes(data) if wanted < 0 else None) for headers, data, wanted in got]


def multipart_target(spec: tuple) -> None:
    (kind, value, *_), body_spec, sizes, reads = spec
    content_type, body = _multipart_input(spec)
    form = body_spec[1] if body_spec[0] == "form" and not body_spec[2] else None
    if kind == "template" and form and value % len(CONTENT_TYPES) < _QUOTED and form[0] == form[0].strip():
        check(boundary_of(content_type) == form[0], "boundary_of does not give back a quoted boundary")
    got = _read_parts(content_type, body, sizes, reads)
    expected = expected_parts(form) if form and boundary_of(content_type) == form[0] else None
    if expected is not None:
        check(len(got) == len(expected), f"{len(got)} parts read from a valid body of {len(expected)}")
        for (headers, content), (want_headers, want_content) in zip(got, expected):
            check(headers == want_headers, "part headers read wrong")
            check(content is None or content == want_content, "part content read wrong")


# --- 2. DICOM JSON: QIDO-RS answers to records and the Study tree ----------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2**64, -(2**63), 10**400]),
              st.floats(), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3),
                            st.fixed_dictionaries({"Alphabetic": inner})),
    max_leaves=6,
)
VR_TEXTS = st.one_of(st.sampled_from(["UI", "PN", "CS", "LO", "DA", "IS", "DS", "US", "SQ", "UN", "OB"]), TEXT)
JSON_ELEMENTS = st.one_of(
    st.fixed_dictionaries({"vr": VR_TEXTS}, optional={"Value": st.one_of(st.lists(JSON_VALUES, max_size=3), JSON_VALUES),
                                                      "InlineBinary": TEXT, "BulkDataURI": TEXT}),
    st.builds(lambda uid: {"vr": "UI", "Value": [uid]}, UIDS),
    JSON_VALUES,
)
_UID_TAGS = ["0020000D", "0020000E", "00080018"]
JSON_DATASETS = st.builds(
    lambda uids, rest: {**{tag: {"vr": "UI", "Value": values} for tag, values in zip(_UID_TAGS, uids)}, **rest},
    st.lists(weighted((3, st.builds(lambda uid: [uid], UIDS)), (1, st.lists(st.one_of(UIDS, JSON_VALUES), max_size=2))),
             max_size=3),
    st.dictionaries(TAG_TEXTS, JSON_ELEMENTS, max_size=5),
)
JSON_DOCUMENTS = weighted(
    (3, st.lists(weighted((3, JSON_DATASETS), (1, JSON_VALUES)), min_size=1, max_size=5)),
    (1, JSON_VALUES),
)
JSON_ENCODINGS = ("ascii", "utf-8", "utf-16", "utf-32-be", "utf-8-sig")
_JSON_TEXTS = st.tuples(kind("json"), JSON_DOCUMENTS, st.integers(0, len(JSON_ENCODINGS) - 1), EDITS)
JSON_BODIES = st.one_of(
    _JSON_TEXTS, _JSON_TEXTS,
    st.tuples(kind("raw"), st.binary(max_size=200)),
    st.tuples(kind("deep"), st.sampled_from([10, 500, 2000, 20_000]), st.sampled_from([b"[", b'{"a":', b'[{"0020000D":'])),
)
QIDO_SPECS = st.tuples(JSON_BODIES, st.integers(0, 2), st.sampled_from([200] * 7 + [204]), st.booleans())
"""(body, query level, HTTP status, Warning: 299 header)."""


def json_body(spec: tuple) -> bytes:
    if spec[0] == "raw":
        return spec[1]
    if spec[0] == "deep":
        depth, opener = spec[1], spec[2]
        return opener * max(depth, 0)
    _, document, encoding, edits = spec
    encoding = pick(JSON_ENCODINGS, encoding)
    text = json.dumps(document, ensure_ascii=encoding == "ascii")
    return apply_edits(text.encode(encoding if encoding != "ascii" else "utf-8", "surrogatepass"), edits)


def qido_target(spec: tuple) -> None:
    body_spec, level, status, warning = spec
    extra = [(b"warning", b'299 pacs "cut"')] if warning else []
    session = FakeHttp("application/dicom+json", json_body(body_spec), status=status, extra_headers=extra)
    query = Query(query_level=pick(LEVELS, level))
    run_async(lambda: QidoRS(session, "http://pacs/dicom-web").find_studies(query))


# --- 3. MINT studySearchResults XML ----------------------------------------------------------------------

_MINT_KEYWORDS = sorted(STUDY_KEYWORDS | SERIES_KEYWORDS | {"SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows"})


def _keyword_attributes(uid_keyword: str) -> st.SearchStrategy[dict[str, str]]:
    return st.builds(
        lambda uid, rest: {**({uid_keyword: uid} if uid is not None else {}), **rest},
        st.one_of(st.none(), XML_UIDS), st.dictionaries(st.sampled_from(_MINT_KEYWORDS), XML_TEXT, max_size=3),
    )


MINT_TREES = st.lists(
    st.tuples(_keyword_attributes("StudyInstanceUID"),
              st.lists(st.tuples(_keyword_attributes("SeriesInstanceUID"),
                                 st.lists(_keyword_attributes("SOPInstanceUID"), max_size=2)), max_size=2)),
    max_size=2,
)
"""What the embedded PACS renders (pacs_soap.mint_search_results): keyword -> text per level."""
_ATTRS = st.lists(st.tuples(TAG_TEXTS, st.one_of(st.none(), VR_TEXTS), st.one_of(st.none(), XML_TEXT)), max_size=3)
MINT_RAW_TREES = st.lists(st.tuples(_ATTRS, st.lists(st.tuples(_ATTRS, st.lists(_ATTRS, max_size=2)), max_size=2)),
                          max_size=2)
"""The same shape with ``attr`` elements as (tag text, vr, val) that need not be valid."""
MINT_SPECS = st.one_of(
    st.tuples(kind("tree"), MINT_TREES, EDITS),
    st.tuples(kind("attrs"), MINT_RAW_TREES, st.booleans(), EDITS),
    st.tuples(kind("raw"), st.one_of(st.binary(max_size=200), st.sampled_from([XML_BOMB, XML_EXTERNAL]))),
    st.tuples(kind("deep"), st.sampled_from([10, 1000, 5000])),
)
MINT = "{http://medical.nema.org/mint}"


def mint_body(spec: tuple) -> bytes:
    if spec[0] == "tree":
        return apply_edits(mint_search_results(spec[1]), spec[2])
    if spec[0] == "raw":
        return spec[1]
    if spec[0] == "deep":
        return b'<studySearchResults xmlns="http://medical.nema.org/mint">' + b"<study>" * max(spec[1], 0)
    _, studies, namespaced, edits = spec
    root = Element(f"{MINT}studySearchResults" if namespaced else "studySearchResults")
    for study_attrs, series_list in studies:
        study = _raw_attrs(SubElement(root, f"{MINT}study"), study_attrs)
        for series_attrs, instances in series_list:
            series = _raw_attrs(SubElement(study, f"{MINT}series"), series_attrs)
            for instance_attrs in instances:
                _raw_attrs(SubElement(series, f"{MINT}instance"), instance_attrs)
    return apply_edits(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True), edits)


def _raw_attrs(element: Element, attrs: list[tuple[str, str | None, str | None]]) -> Element:
    for tag, vr, value in attrs:
        attr = SubElement(element, f"{MINT}attr", tag=tag)
        if vr is not None:
            attr.set("vr", vr)
        if value is not None:
            attr.set("val", value)
    return element


def mint_target(spec: tuple) -> None:
    parse_study_search_results(mint_body(spec))


# --- 4. RAD-69 SOAP envelopes and MTOM answers -----------------------------------------------------------

CONTENT_IDS = ["a@x", "b@x", "c%40x", "<d@x>", " e@x ", ""]
DOCUMENT_UIDS = weighted((3, st.sampled_from(ASKED_UIDS)), (1, XML_UIDS))
DOCUMENTS = st.lists(
    st.tuples(
        DOCUMENT_UIDS,
        st.one_of(
            st.tuples(kind("include"), weighted((3, st.sampled_from(CONTENT_IDS).map("cid:{}".format)), (1, XML_TEXT))),
            st.tuples(kind("inline"), st.one_of(st.sampled_from(["", "AAAA", "AAA", "=", "QUJD\n", "\u00e9"]), XML_TEXT)),
            st.tuples(kind("no-document"), kind("")),
        ),
    ),
    max_size=3,
)
ENVELOPES = weighted(
    (2, st.tuples(kind("testing"), st.dictionaries(DOCUMENT_UIDS, st.sampled_from(CONTENT_IDS), max_size=3),
              st.dictionaries(DOCUMENT_UIDS, st.sampled_from(["XDSMissingDocument", "XDSUnknownRepositoryId"]), max_size=2),
              EDITS)),
    (3, st.tuples(kind("built"), DOCUMENTS,
              st.lists(st.tuples(st.one_of(st.none(), XML_TEXT), st.one_of(st.none(), XML_TEXT),
                                 st.one_of(st.none(), XML_TEXT)), max_size=2),
              st.lists(XML_TEXT, max_size=2), st.sampled_from([True, True, True, False]), EDITS)),
    (1, st.tuples(kind("raw"), st.one_of(st.binary(max_size=200), st.sampled_from([XML_BOMB, XML_EXTERNAL])))),
)
"""("testing", found uid -> cid, missing uid -> code, edits): pacs_soap.rad69_envelope, mutated;
("built", documents, registry errors, faults, SOAP 1.2 root, edits): an envelope of any shape."""
ROOT_PART_TYPES = ['application/xop+xml; charset=UTF-8; type="application/soap+xml"', "application/soap+xml"] * 3 + [
    "application/dicom", ""]
RAD69_RESPONSES = weighted(
    (2, st.tuples(kind("soap"), ENVELOPES, st.sampled_from(["application/soap+xml; charset=utf-8", "text/xml"]))),
    (3, st.tuples(kind("mtom"), ENVELOPES, st.integers(0, len(ROOT_PART_TYPES) - 1),
                  st.lists(st.tuples(st.sampled_from(CONTENT_IDS), st.binary(max_size=24)), max_size=3),
                  MULTIPART_FORMS.map(lambda form: form[:1] + form[2:]),  # the framing, parts come from above
                  st.integers(0, 1), EDITS)),  # lower-case multipart/related: see rad69.py (startswith)
    (1, st.tuples(kind("raw"), TEXT, st.binary(max_size=200))),
)
RAD69_SPECS = st.tuples(RAD69_RESPONSES, st.lists(st.sampled_from(ASKED_UIDS), min_size=1, max_size=3, unique=True),
                        CHUNK_SIZES)
"""(response, instance UIDs asked for, chunk sizes)."""


def envelope_body(spec: tuple) -> bytes:
    if spec[0] == "raw":
        return spec[1]
    if spec[0] == "testing":
        _, found, missing, edits = spec
        return apply_edits(rad69_envelope("1.3.6.1.4.1000", found, missing), edits)
    _, documents, errors, faults, soap12, edits = spec
    envelope = Element(f"{{{SOAP}}}Envelope" if soap12 else "{http://schemas.xmlsoap.org/soap/envelope/}Envelope")
    body = SubElement(envelope, f"{{{SOAP}}}Body")
    for reason in faults:
        SubElement(SubElement(body, f"{{{SOAP}}}Fault"), f"{{{SOAP}}}Reason").text = reason
    response = SubElement(body, f"{{{XDS}}}RetrieveDocumentSetResponse")
    registry = SubElement(response, f"{{{REGREP}}}RegistryResponse")
    for code, location, context in errors:
        error = SubElement(registry, f"{{{REGREP}}}RegistryError")
        for name, value in (("errorCode", code), ("location", location), ("codeContext", context)):
            if value is not None:
                error.set(name, value)
    for uid, (kind, value) in documents:
        document = SubElement(response, f"{{{XDS}}}DocumentResponse")
        SubElement(document, f"{{{XDS}}}DocumentUniqueId").text = uid
        if kind == "include":
            SubElement(SubElement(document, f"{{{XDS}}}Document"), f"{{{XOP}}}Include", href=value)
        elif kind == "inline":
            SubElement(document, f"{{{XDS}}}Document").text = value
    return apply_edits(ElementTree.tostring(envelope, encoding="utf-8", xml_declaration=True), edits)


def rad69_input(spec: tuple) -> tuple[str, bytes]:
    response = spec[0]
    if response[0] == "raw":
        return header_text(response[1]), response[2]
    if response[0] == "soap":
        return header_text(response[2]), envelope_body(response[1])
    _, envelope, root_type, attachments, framing, content_type, edits = response
    root = ([("Content-Type", pick(ROOT_PART_TYPES, root_type)), ("Content-ID", "<root@x>")], envelope_body(envelope))
    parts = [root, *(([("Content-Type", "application/dicom"), ("Content-ID", f"<{cid}>")], data)
                      for cid, data in attachments)]
    form = (framing[0], parts, *framing[1:])
    return header_text(pick(CONTENT_TYPES, content_type).format(framing[0])), apply_edits(multipart_body(form), edits)


def rad69_target(spec: tuple) -> None:
    _, asked, sizes = spec
    content_type, body = rad69_input(spec)
    session = FakeHttp(content_type, body, sizes=sizes)
    reference = SeriesReference(study_uid="1.2.3", series_uid="1.2.3.4", instance_uids=tuple(asked) or ("1.2.3.1",))
    run_async(lambda: Rad69(session, "http://pacs/rad69", "1.3.6.1.4.1000").fetch(reference, RecordingSink()))


# --- 5. C-FIND identifiers to records and the Study tree --------------------------------------------------

_CFIND_KEYWORDS = [*_SEARCH_KEYWORDS, "QueryRetrieveLevel", "RetrieveAETitle", "ReferencedStudySequence",
                   "OtherPatientIDsSequence", "PixelData", "NumberOfFrames", "SOPClassesInStudy"]
CFIND_TAGS = st.one_of(
    st.sampled_from([tag_for_keyword(keyword) for keyword in _CFIND_KEYWORDS]),
    st.sampled_from([0x00080000, 0x00090010, 0x00091001, 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0x60000010, 0x00000000]),
    st.integers(0, 0xFFFFFFFF),
)
VRS = ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OW", "OV",
       "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"]
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
CHARACTER_SETS = [
    b"ISO_IR 100", b"ISO_IR 192", b"ISO 2022 IR 87", b"\\ISO 2022 IR 87", b"ISO 2022 IR 13\\ISO 2022 IR 87",
    b"GB18030", b"ISO_IR 6", b"", b"bogus", b"ISO 2022 IR 149\\ISO 2022 IR 87\\", b"ISO_IR 100\\ISO_IR 192",
    b"ISO 2022 IR 6\\ISO 2022 IR 58", b"ISO_IR 13", b"\xff\xfe",
]
_CODECS = ["latin-1", "utf-8", "shift_jis", "iso2022_jp", "gb18030", "euc_kr", "cp1252", "utf-16"]
CFIND_VALUES = st.one_of(
    st.binary(max_size=24),
    st.builds(lambda text, codec: text.encode(pick(_CODECS, codec), "replace"), TEXT, st.integers(0, len(_CODECS) - 1)),
    st.sampled_from([*CHARACTER_SETS, b"\x1b$B$3$s\x1b(B", b"\x1b$)C\x0e\x21\x21", b"Yamada^Tarou=\x1b$B;3ED\x1b(B",
                     b"a\\b", b"1", b" 12 ", b"1.5e999", b"-", b"\\", b"\0\0", b"\x00", b"NaN", b"1" * 5000]),
)
CFIND_ELEMENTS = st.recursive(
    st.tuples(CFIND_TAGS, st.one_of(st.sampled_from(VRS), st.text(max_size=2)), CFIND_VALUES,
              st.one_of(st.none(), st.sampled_from([0, 1, 3, 0xFFFF, 0xFFFFFFFF]))),
    lambda inner: st.tuples(st.just(tag_for_keyword("ReferencedStudySequence")), kind("SQ"),
                            st.lists(st.lists(inner, max_size=3), max_size=2), st.none()),
    max_leaves=8,
)
"""(tag, VR, value bytes or [items of elements] for a sequence, length written instead of the real one)."""
IDENTIFIERS = st.one_of(
    st.tuples(kind("encoded"), st.booleans(), st.booleans(), st.one_of(st.none(), st.sampled_from(CHARACTER_SETS)),
              st.lists(CFIND_ELEMENTS, max_size=6)),
    st.tuples(kind("direct"), st.booleans(), st.booleans(), st.one_of(st.none(), st.sampled_from(CHARACTER_SETS)),
              st.lists(st.tuples(CFIND_TAGS, st.one_of(st.none(), st.sampled_from([*VRS, "US or SS", "OB or OW"])),
                                 CFIND_VALUES), max_size=6)),
    st.tuples(kind("raw"), st.booleans(), st.booleans(), st.binary(max_size=120)),
)
"""An identifier as a peer encodes it (implicit VR?, little endian?, SpecificCharacterSet, elements),
as RawDataElements put in a Dataset directly, or as random bytes."""
CFIND_SPECS = st.tuples(st.lists(IDENTIFIERS, min_size=1, max_size=3), st.integers(0, 2))


def encode_element(tag: int, vr: str, value: Any, length: int | None, implicit: bool, little: bool) -> bytes:
    order = "<" if little else ">"
    if isinstance(value, list):  # a sequence of items, each of undefined length
        item = struct.pack(order + "HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        end_item = struct.pack(order + "HHI", 0xFFFE, 0xE00D, 0)
        data = b"".join(item + b"".join(encode_element(*e, implicit, little) for e in elements) + end_item
                        for elements in value) + struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)
        length = 0xFFFFFFFF if length is None else length
    else:
        data = value
    size = len(data) if length is None else length
    head = struct.pack(order + "HH", (tag >> 16) & 0xFFFF, tag & 0xFFFF)
    if implicit or tag >> 16 == 0xFFFE:
        return head + struct.pack(order + "I", size & 0xFFFFFFFF) + data
    code = vr.encode("latin-1", "replace")[:2].ljust(2, b" ")
    if vr in _LONG_VRS:
        return head + code + b"\0\0" + struct.pack(order + "I", size & 0xFFFFFFFF) + data
    return head + code + struct.pack(order + "H", size & 0xFFFF) + data


def identifier_bytes(spec: tuple) -> bytes:
    if spec[0] == "raw":
        return spec[3]
    _, implicit, little, charset, elements = spec
    if charset is not None:
        elements = [(0x00080005, "CS", charset, None), *elements]
    return b"".join(encode_element(*element, implicit, little) for element in elements)


def identifier_input(spec: tuple) -> Any:
    """An identifier's bytes as they come off the wire, or the raw elements put in a Dataset."""
    if spec[0] == "direct":
        return [(f"{tag:08X}", vr, value) for tag, vr, value in spec[4]]
    return identifier_bytes(spec)


def identifier(spec: tuple) -> Dataset | None:
    """The Dataset pynetdicom hands to trolleyfs for one C-FIND answer, or None where pynetdicom
    itself cannot decode it (it logs that and yields no identifier)."""
    kind, implicit, little = spec[:3]
    if kind == "direct":
        _, _, _, charset, elements = spec
        raws = [(0x00080005, "CS", charset)] * (charset is not None) + elements
        dataset = Dataset({Tag(tag): RawDataElement(Tag(tag), vr, len(value), value, 0, implicit, little, True, False)
                           for tag, vr, value in raws})
        dataset.set_original_encoding(implicit, little, None)
        return dataset
    try:
        return pynetdicom_decode(io.BytesIO(identifier_bytes(spec)), implicit, little)
    except Exception:  # noqa: BLE001 - pynetdicom catches everything its decoding raises
        return None


def cfind_target(spec: tuple) -> None:
    identifiers, level = spec
    datasets = [dataset for dataset in map(identifier, identifiers) if dataset is not None]
    build_studies([record_from_identifier(dataset) for dataset in datasets], pick(LEVELS, level))


# --- 6. mount options (-o key=value) and the TOML config file -----------------------------------------

CONFIG_KEYS = sorted(Config.model_fields)
_OPTION_KEYS = st.one_of(
    st.sampled_from([*CONFIG_KEYS, "config", "rw", "ro", "noauto", "x-systemd.automount", "comment=x",
                     "writeback_cache", "password", "token", "client_secret"]),
    TEXT,
)
OPTION_VALUES = st.one_of(
    st.sampled_from([
        "2G", "1.5g", "500MiB", "4096", "9" * 400, "-1", "1e3", "0", "http://pacs:8042/dicom-web", "https://[::1]:8443",
        "dicom://ORTHANC@127.0.0.1:4242", "dicom://A@[::1", "dicom://@h:1", "dicom://A@h:99999", "dicom://" + "A" * 17 + "@h:1",
        "http://user:pw@h", "http://[", "ftp://h", "{StudyDate}", "{", "}", "{x!r}", "{SeriesNumber:{x}}", "{0}",
        "{StudyDate.year}", "{StudyDate[0]}", "{SeriesNumber:03}", "027", "8", "0o777", "١٢", "root", "nosuchuser",
        "4294967296", "a\0b", "true", "yes", "maybe", "debug", "qido-rs", "mint", "rad69", "c-move", "x\\",
    ]),
    TEXT,
)
SOURCES = st.one_of(st.sampled_from(["http://pacs:8042/dicom-web", "dicom://ORTHANC@127.0.0.1:4242", "", "pacs"]), TEXT)
ENVIRONMENTS = st.dictionaries(st.sampled_from(CONFIG_KEYS + ["config"]).map(lambda key: "TROLLEYFS_" + key.upper()),
                               OPTION_VALUES, max_size=3)
_OPTION_TEXTS = st.one_of(
    st.lists(st.one_of(st.tuples(_OPTION_KEYS, st.sampled_from(["=", "", "=="]), OPTION_VALUES), TEXT.map(lambda t: (t,))),
             max_size=4),
    TEXT.map(lambda text: [(text,)]),
)
MOUNT_OPTION_SPECS = st.tuples(
    st.lists(_OPTION_TEXTS, min_size=1, max_size=3),
    st.sampled_from([",", ",,", " , ", "\\,"]),
    SOURCES,
    ENVIRONMENTS,
)
"""(the -o options, each as pieces; the separator between pieces; SOURCE; environment)."""


def mount_option_texts(spec: tuple) -> list[str]:
    """The text of each ``-o`` of a spec, as it arrives in argv."""
    groups, separator = spec[0], spec[1]
    return [argv_text(separator.join("".join(piece) for piece in pieces)) for pieces in groups]


class _Scratch:
    """Files the config targets write: one directory for the whole run."""

    def __init__(self) -> None:
        self._dir: Path | None = None

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="trolleyfs-fuzz-"))
            (self._dir / "empty.toml").write_text("")
            (self._dir / "subdir").mkdir()
        return self._dir

    def write(self, name: str, data: bytes, mode: int = 0o600) -> str:
        path = self.dir / name
        path.write_bytes(data)
        os.chmod(path, mode)
        return str(path)

    def path_for(self, value: Any) -> Any:
        """A path value (``config``, ``credentials_file``) made harmless: a string becomes a name in
        the scratch directory (keeping a NUL, which makes a path invalid), never a path of the
        machine (``/dev/stdin`` would block); any other type is kept."""
        if not isinstance(value, str):
            return value
        if value in ("", "@credentials", "@subdir"):
            return {"@credentials": str(self.dir / "credentials.toml"), "@subdir": str(self.dir / "subdir")}.get(value, value)
        return str(self.dir / ("p-" + value.replace("/", "_").replace(".", "_")[:40]))


SCRATCH = _Scratch()
_PATH_KEYS = ("config", "credentials_file")


def harmless(options: dict[str, Any]) -> dict[str, Any]:
    return {key: SCRATCH.path_for(value) if key in _PATH_KEYS else value for key, value in options.items()}


def harmless_environment(environ: dict[str, str]) -> dict[str, str]:
    environ = {key: argv_text(value) for key, value in environ.items()}
    return {key: SCRATCH.path_for(value) if key in ("TROLLEYFS_CONFIG", "TROLLEYFS_CREDENTIALS_FILE") else value
            for key, value in environ.items()}


def mount_options_target(spec: tuple) -> None:
    """What `trolleyfs mount -o A -o B` (cli._options, then load_config) and `mount.trolleyfs -o A
    -o B` (split_options each, join_mount_options, then the same) do with option strings."""
    texts, source, environ = mount_option_texts(spec), argv_text(spec[2]), spec[3]
    options: dict[str, str] = {}
    for text in texts:
        options.update(parse_mount_options(text))
    with contextlib.suppress(TrolleyError):
        load_config(harmless({**options, "source": source}), environ=harmless_environment(environ))
    kept: dict[str, str] = {}
    for text in texts:
        kept.update(split_options(text)[0])
    for key, value in kept.items():
        check(parse_mount_options(join_mount_options({key: value})) == {key: value},
              "mount.trolleyfs passes on one option (join_mount_options) that parses back differently")
    check(parse_mount_options(join_mount_options(kept)) == kept,
          "mount.trolleyfs passes on options (join_mount_options) that parse back differently together")


TOML_TEXT = weighted((3, st.text(st.characters(exclude_categories=("Cs",)), max_size=12)), (1, TEXT))
"""Text a TOML file can hold (it is UTF-8: no lone surrogates), now and then text it cannot."""
TOML_VALUES = st.recursive(
    st.one_of(TOML_TEXT, OPTION_VALUES, st.integers(), st.floats(), st.booleans(), st.datetimes(), st.dates(), st.times(),
              st.sampled_from(["@credentials", "@subdir"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TOML_TEXT, inner, max_size=2)),
    max_leaves=5,
)
TOML_TABLES = st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS + list(_PATH_KEYS) + ["password", "token"]), TOML_TEXT),
                              TOML_VALUES, max_size=5)
TOML_FILES = weighted(
    (3, st.tuples(kind("toml"), TOML_TABLES, EDITS)),
    (1, st.tuples(kind("raw"), st.binary(max_size=120))),
)
CREDENTIAL_TABLES = st.dictionaries(st.sampled_from(["username", "password", "token", "client_id", "client_secret",
                                                     "other"]), TOML_VALUES, max_size=3)
CONFIG_FILE_SPECS = st.tuples(
    TOML_FILES,
    st.one_of(st.none(), st.tuples(st.one_of(st.tuples(kind("toml"), CREDENTIAL_TABLES, EDITS), TOML_FILES),
                                   st.sampled_from([0o600, 0o400, 0o644]))),
    SOURCES,
    st.dictionaries(st.sampled_from(CONFIG_KEYS), OPTION_VALUES, max_size=2),
    ENVIRONMENTS,
)
"""(config file, credentials file and its mode, SOURCE, other -o options, environment)."""


def toml_text(table: dict[str, Any]) -> str:
    return "".join(f"{_toml_key(key)} = {_toml_value(value)}\n" for key, value in table.items())


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = "".join(
        "\\\\" if char == "\\" else '\\"' if char == '"' else f"\\u{ord(char):04x}" if ord(char) < 0x20 or char == "\x7f"
        else char
        for char in text
    )
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else "inf" if value == float("inf") else "-inf" if value == -float("inf") else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return _toml_string(value)


def toml_bytes(spec: tuple, paths: bool = True) -> bytes:
    if spec[0] == "raw":
        return spec[1]
    table = harmless(spec[1]) if paths else spec[1]
    return apply_edits(toml_text(table).encode("utf-8", "surrogatepass"), spec[2])


def config_file_target(spec: tuple) -> None:
    """What load_config makes of a config file (-o config=FILE) and a credentials file."""
    config, credentials, source, cli, environ = spec
    path = SCRATCH.write("config.toml", toml_bytes(config))
    if credentials is not None:
        SCRATCH.write("credentials.toml", toml_bytes(credentials[0], paths=False), credentials[1])
    cli = {key: argv_text(value) for key, value in cli.items()}
    load_config({**harmless({**cli, "source": argv_text(source)}), "config": path}, environ=harmless_environment(environ))


# --- 7. /query folder names ---------------------------------------------------------------------------

QUERY_NAME_KEYS = st.one_of(
    st.sampled_from([*QUERY_KEYS, "limit", "SeriesInstanceUID", "PatientSex", "Modality", "patientname", "LIMIT", ""]),
    TEXT,
)
DATES = st.dates().map(lambda day: day.strftime("%Y%m%d"))
QUERY_NAME_VALUES = st.one_of(
    TEXT,
    DATES,
    st.builds("{}-{}".format, st.one_of(DATES, st.just("")), st.one_of(DATES, st.just(""))),
    st.sampled_from(["20240230", "00000101", "99991231-00010101", "2024010", "202401011", "-", "--", "1", "0",
                     "01", "１", "%2F", "%2f", "%26", "%25", "%", "%2", "%zz", "%%", "%252F", "a=b", "9" * 240]),
)
QUERY_NAME_SPECS = st.one_of(
    st.lists(st.tuples(QUERY_NAME_KEYS, st.sampled_from(["=", "", "=="]), QUERY_NAME_VALUES), max_size=4),
    TEXT.map(lambda text: [(text,)]),
)


def query_folder_name(spec: tuple) -> str:
    """The name as FUSE hands it over: at most 255 bytes, no ``/`` or NUL, decoded by os.fsdecode."""
    name = "&".join("".join(piece) for piece in spec).encode("utf-8", "surrogatepass")
    return os.fsdecode(name.translate(None, b"/\0")[:255])


def query_name_target(spec: tuple) -> None:
    query = parse_query_name(query_folder_name(spec))
    canonical = query_name(query)
    try:
        again = parse_query_name(canonical)
    except TrolleyError as exc:
        raise Mismatch(f"parse_query_name refuses the name query_name wrote: {exc}") from exc
    check(again == query, "name -> Query -> name -> Query does not come back to the same Query")
    check(query_name(again) == canonical, "the canonical name of a Query is not stable")


# --- 8. the Study tree as the filesystem shows it ------------------------------------------------------------

ATTRIBUTE_VALUES = st.one_of(TEXT, st.lists(TEXT, max_size=3), JSON_VALUES)
"""What a record may hold: text and lists of it (C-FIND, MINT), any JSON value (QIDO-RS)."""
RECORDS = st.lists(
    st.builds(
        lambda uids, rest: {**dict(zip(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), uids)), **rest},
        st.lists(st.one_of(UIDS, JSON_VALUES), max_size=3),
        st.dictionaries(st.sampled_from(_SEARCH_KEYWORDS + ["NotAKeyword"]), ATTRIBUTE_VALUES, max_size=5),
    ),
    max_size=5,
)
STUDY_TREE_SPECS = st.tuples(RECORDS, st.integers(0, 2))
NAMING = Naming()


def study_tree_target(spec: tuple) -> None:
    """Records (as any searcher may make them) -> build_studies -> what fs/dicom.py, fs/views and
    fs/sidecars do with the tree when it is listed, named, read as study.json/series.json and
    asked for xattrs."""
    records, level = spec
    studies = build_studies(records, pick(LEVELS, level))
    study_names = []
    for study in studies:
        attributes = study.attributes
        study_names.append((NAMING.study.name(attributes), study.uid))
        study_time(attributes)
        patient_dir_name(text_of(attributes.get("PatientID")))
        render_json(dicom_json(attributes))
        xattr_values(attributes)
        Query(StudyInstanceUID=study.uid, query_level=QueryLevel.SERIES)  # StudyDir.series_query
        series_names = []
        for series in study.series:
            series_names.append((NAMING.series.name(series.attributes), series.uid))
            xattr_values(series.attributes)
            Query(StudyInstanceUID=study.uid, SeriesInstanceUID=series.uid, query_level=QueryLevel.INSTANCE)
            render_json({"series": dicom_json(series.attributes),
                         "instances": [dicom_json({"SOPInstanceUID": i.uid, **i.attributes}) for i in series.instances]},
                        indent=None)
            instance_names = []
            for instance in series.instances:
                instance_names.append((NAMING.instance.name(instance.attributes), instance.uid))
                estimated_size(instance.attributes)
                xattr_values({"SOPInstanceUID": instance.uid, **instance.attributes})
                InstanceReference(study_uid=study.uid, series_uid=series.uid, instance_uid=instance.uid,
                                  sop_class_uid=text_of(instance.attributes.get("SOPClassUID")))
            unique_names(instance_names, frozenset({"series.json"}))
        unique_names(series_names, frozenset({"study.json"}))
    unique_names(study_names)


# --- the registry ---------------------------------------------------------------------------------------

TARGETS: dict[str, Target] = {
    "multipart": Target(MULTIPART_SPECS, multipart_target, _multipart_input),
    "dicom-json": Target(QIDO_SPECS, qido_target, lambda spec: json_body(spec[0])),
    "mint-xml": Target(MINT_SPECS, mint_target, mint_body),
    "rad69": Target(RAD69_SPECS, rad69_target, rad69_input),
    "c-find": Target(CFIND_SPECS, cfind_target, lambda spec: [identifier_input(i) for i in spec[0]]),
    "mount-options": Target(MOUNT_OPTION_SPECS, mount_options_target,
                            lambda spec: {"-o": mount_option_texts(spec), "source": spec[2], "environ": spec[3]}),
    "config-file": Target(CONFIG_FILE_SPECS, config_file_target,
                          lambda spec: {"config file": toml_bytes(spec[0]),
                                        "credentials file": spec[1] and (toml_bytes(spec[1][0], paths=False), oct(spec[1][1])),
                                        "source": spec[2], "-o": spec[3], "environ": spec[4]}),
    "query-names": Target(QUERY_NAME_SPECS, query_name_target, query_folder_name),
    "study-tree": Target(STUDY_TREE_SPECS, study_tree_target, lambda spec: spec),
}
