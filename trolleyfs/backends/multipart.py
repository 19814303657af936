"""A streaming reader of multipart/related bodies (RFC 2046 / RFC 2387), as WADO-RS sends them.

It never holds more than one network chunk plus a delimiter's length of a body in memory: each
part's content is handed on chunk by chunk as it arrives, so a series of any size can be written
straight to disk. It works when the server sends no Content-Length and ends the body by closing
the connection. A body that ends before its closing delimiter is an error, so a cut-off transfer
is never mistaken for a complete one.

Line ends are read leniently, as many MTOM and WADO servers write them: a bare LF works wherever
the RFC says CRLF (delimiter lines and part headers); a CR before a delimiter's LF belongs to the
delimiter, never to the content.
"""

from __future__ import annotations

import email.message
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from trolleyfs.errors import PacsProtocolError

_MAX_HEADER_BYTES = 16 * 1024
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
"""RFC 2046 §5.1.1: 1 to 70 bcharsnospace or spaces, not ending in a space."""


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type header."""
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "multipart":
        raise PacsProtocolError(f"expected a multipart answer, got Content-Type {content_type!r}")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise PacsProtocolError(f"multipart Content-Type without a boundary: {content_type!r}")
    if not _BOUNDARY.fullmatch(boundary):
        raise PacsProtocolError("multipart boundary is not 1 to 70 of the characters RFC 2046 allows")
    return boundary


@dataclass
class Part:
    headers: dict[str, str]
    """Part headers, names lower-cased."""
    content: AsyncIterator[bytes]
    """The part's bytes; read it to the end before asking for the next part."""

    @property
    def content_type(self) -> str:
        """The part's media type and parameters, lower-cased (media types are case-insensitive)."""
        return self.headers.get("content-type", "").lower()


class MultipartReader:
    """Iterate over the parts of a multipart body given as an async stream of chunks."""

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str) -> None:
        self._chunks = chunks
        # A CRLF is put in front of the body so that the first delimiter looks like every other.
        self._buffer = bytearray(b"\r\n")
        self._delimiter = b"\n--" + boundary.encode("latin-1")
        self._exhausted = False

    async def parts(self) -> AsyncIterator[Part]:
        await self._skip_past_delimiter()
        while True:
            if not await self._fill(2):
                raise PacsProtocolError("multipart body ends right after a delimiter")
            if self._buffer[:2] == b"--":
                return
            headers = await self._read_headers()
            part = Part(headers=headers, content=self._part_content())
            yield part
            async for _ in part.content:  # skip whatever the consumer left unread
                pass

    async def _fill(self, size: int) -> bool:
        """Read until the buffer holds ``size`` bytes; False if the stream ends first."""
        while len(self._buffer) < size:
            if not await self._read_more():
                return False
        return True

    async def _read_more(self) -> bool:
        while not self._exhausted:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                self._exhausted = True
            elif chunk:
                self._buffer += chunk
                return True
        return False

    async def _skip_past_delimiter(self) -> None:
        while (index := self._buffer.find(self._delimiter)) < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[:-keep]
            if not await self._read_more():
                raise PacsProtocolError("multipart body has no boundary delimiter")
        del self._buffer[: index + len(self._delimiter)]

    async def _read_headers(self) -> dict[str, str]:
        while (found := _blank_line(self._buffer)) is None:
            if len(self._buffer) > _MAX_HEADER_BYTES or not await self._read_more():
                raise PacsProtocolError("multipart part headers are cut off or too long")
        end, after = found
        # What follows the delimiter up to the first line end is transport padding (RFC 2046 §5.1.1).
        first_line_end = self._buffer.find(b"\n")
        block = bytes(self._buffer[first_line_end + 1 : end]) if first_line_end < end else b""
        del self._buffer[:after]
        headers: dict[str, str] = {}
        for line in block.decode("latin-1").split("\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers

    async def _part_content(self) -> AsyncIterator[bytes]:
        keep = len(self._delimiter)  # one more than a delimiter's prefix: the CR in front of it
        while True:
            index = self._buffer.find(self._delimiter)
            if index >= 0:
                end = index - 1 if index and self._buffer[index - 1] == 0x0D else index
                if end:
                    yield self._take(end)
                del self._buffer[: index - end + len(self._delimiter)]
                return
            if len(self._buffer) > keep:
                yield self._take(len(self._buffer) - keep)
            if not await self._read_more():
                raise PacsProtocolError("multipart body ends inside a part (transfer cut off)")

    def _take(self, size: int) -> bytes:
        """The first ``size`` bytes of the buffer, removed from it (copied once)."""
        with memoryview(self._buffer) as view:
            data = bytes(view[:size])
        del self._buffer[:size]
        return data


def _blank_line(buffer: bytearray) -> tuple[int, int] | None:
    """Where the header block ends (the first empty line, CRLF or LF) and its content starts."""
    candidates = []
    for blank in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        if (index := buffer.find(blank)) >= 0:
            candidates.append((index, index + len(blank)))
    return min(candidates) if candidates else None
