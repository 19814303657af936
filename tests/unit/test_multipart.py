"""The multipart/related push parser, fed in every possible chunking."""

from __future__ import annotations

import pytest

from trolleyfs.backends.multipart import MultipartSplitter, boundary_of
from trolleyfs.errors import PacsProtocolError

BOUNDARY = "b0undary"
PARTS = [b"\x00" * 7 + b"DICM first\r\n--b0und", b"second \r\n\r\n part", b""]


def body(parts=PARTS, preamble=b"", padding=b"", close=True) -> bytes:
    out = preamble
    for part in parts:
        out += f"--{BOUNDARY}".encode() + padding + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


class Collected:
    """A PartHandler keeping every part, and whether each ended or was aborted."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict, bytearray, list[str]]] = []

    def begin(self, headers):
        data, fate = bytearray(), []
        self.parts.append((headers, data, fate))

        class Part:
            def write(self, piece):
                data.extend(piece)

            def end(self):
                fate.append("end")

            def abort(self):
                fate.append("abort")

        return Part()


def split(data: bytes, chunk: int) -> Collected:
    collected = Collected()
    splitter = MultipartSplitter(BOUNDARY, collected)
    try:
        for start in range(0, len(data), chunk):
            splitter.feed(data[start : start + chunk])
        splitter.close()
    except BaseException:
        splitter.abort()
        raise
    return collected


async def parse(data: bytes, chunk: int) -> list[tuple[dict, bytes]]:
    collected = split(data, chunk)
    assert all(fate == ["end"] for _, _, fate in collected.parts)
    return [(headers, bytes(content)) for headers, content, _ in collected.parts]


async def test_parts_come_out_whole_however_the_body_is_chunked():
    data = body(preamble=b"ignored preamble\r\n", padding=b"  ")
    for chunk in range(1, len(data) + 1):
        parts = await parse(data, chunk)
        assert [content for _, content in parts] == PARTS, chunk
        assert all(headers["content-type"] == "application/dicom" for headers, _ in parts)


@pytest.mark.parametrize("data", [body(close=False), body()[:-30], b"", b"no delimiter at all"])
async def test_a_cut_off_or_malformed_body_is_an_error(data):
    with pytest.raises(PacsProtocolError):
        await parse(data, 5)


def test_boundary_is_read_from_the_content_type():
    assert boundary_of('multipart/related; type="application/dicom"; boundary="a b"') == "a b"
    assert boundary_of("multipart/related; boundary=xyz; type=application/dicom") == "xyz"
    with pytest.raises(PacsProtocolError):
        boundary_of("application/dicom")
    with pytest.raises(PacsProtocolError):
        boundary_of("multipart/related")


async def test_bare_lf_line_ends_are_read_like_crlf_and_a_cr_before_a_delimiter_is_not_content():
    lf_body = body().replace(b"\r\nContent-Type: application/dicom\r\n\r\n", b"\nContent-Type: application/dicom\n\n")
    lf_body = lf_body.replace(b"\r\n--" + BOUNDARY.encode(), b"\n--" + BOUNDARY.encode())
    assert b"\r\n--" + BOUNDARY.encode() not in lf_body
    for chunk in range(1, len(lf_body) + 1):
        parts = await parse(lf_body, chunk)
        assert [content for _, content in parts] == PARTS, chunk
        assert all(headers["content-type"] == "application/dicom" for headers, _ in parts)


def test_a_part_cut_off_is_aborted_never_ended_and_the_parts_before_it_are_whole():
    data = body()
    cut = data[: data.index(PARTS[1]) + 3]
    collected = Collected()
    splitter = MultipartSplitter(BOUNDARY, collected)
    splitter.feed(cut)
    with pytest.raises(PacsProtocolError):
        splitter.close()
    assert [fate for _, _, fate in collected.parts] == [["end"], ["abort"]]
    assert bytes(collected.parts[0][1]) == PARTS[0]
