"""A push parser of multipart/related bodies (RFC 2046 / RFC 2387), as WADO-RS and MTOM send them.

The body is fed to :meth:`MultipartSplitter.feed` as it arrives, in chunks of any size (a worker
thread feeds it reads of up to 1 MiB); each part's bytes go to the consumer its headers were given
to, as views of the splitter's buffer, so that a series of any size goes straight to disk with one
copy. The delimiter is searched for with ``bytes.find`` over the bytes not yet handed on only, and
the buffer never holds more than one fed chunk plus a delimiter's length. It works when the server
sends no Content-Length and ends the body by closing the connection. A body that ends before its
closing delimiter is an error, so a cut-off transfer is never mistaken for a complete one.

Line ends are read leniently, as many MTOM and WADO servers write them: a bare LF works wherever
the RFC says CRLF (delimiter lines and part headers); a CR before a delimiter's LF belongs to the
delimiter, never to the content.
"""

from __future__ import annotations

import email.message
import re
from typing import Protocol

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


def media_type(headers: dict[str, str]) -> str:
    """A part's media type and parameters, lower-cased (media types are case-insensitive)."""
    return headers.get("content-type", "").lower()


class PartConsumer(Protocol):
    """Where one part's bytes go."""

    def write(self, data: memoryview) -> None:
        """The next bytes of the part; ``data`` is only valid during the call."""
        ...

    def end(self) -> None:
        """The part is complete."""
        ...

    def abort(self) -> None:
        """The body failed while this part was open: throw away what it received."""
        ...


class PartHandler(Protocol):
    def begin(self, headers: dict[str, str]) -> PartConsumer:
        """The consumer of a part with these headers (names lower-cased)."""
        ...


_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _CONTENT, _DONE = range(5)


class MultipartSplitter:
    """Split a multipart body fed in chunks into parts handed to ``handler``."""

    def __init__(self, boundary: str, handler: PartHandler) -> None:
        self._handler = handler
        # A CRLF is put in front of the body so that the first delimiter looks like every other.
        self._buffer = bytearray(b"\r\n")
        self._delimiter = b"\n--" + boundary.encode("latin-1")
        self._state = _PREAMBLE
        self._part: PartConsumer | None = None
        self.parts = 0
        """Parts begun so far."""

    def feed(self, data: bytes | memoryview) -> None:
        if self._state == _DONE:
            return  # the epilogue: ignored
        self._buffer += data
        while self._step():
            pass

    def close(self) -> None:
        """The body has ended: an error unless the closing delimiter was seen."""
        if self._state == _DONE:
            return
        self.abort()
        if self._state == _PREAMBLE:
            raise PacsProtocolError("multipart body has no boundary delimiter")
        if self._state == _AFTER_DELIMITER:
            raise PacsProtocolError("multipart body ends right after a delimiter")
        if self._state == _HEADERS:
            raise PacsProtocolError("multipart part headers are cut off or too long")
        raise PacsProtocolError("multipart body ends inside a part (transfer cut off)")

    def abort(self) -> None:
        """Abort the part being received, if any (the transfer failed)."""
        part, self._part = self._part, None
        if part is not None:
            part.abort()

    def _step(self) -> bool:
        """Make what progress the buffer allows; False when it needs more bytes."""
        if self._state == _PREAMBLE:
            return self._skip_preamble()
        if self._state == _AFTER_DELIMITER:
            if len(self._buffer) < 2:
                return False
            if self._buffer[:2] == b"--":
                self._state = _DONE
                self._buffer.clear()
                return False
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            return self._read_headers()
        if self._state == _CONTENT:
            return self._read_content()
        return False

    def _skip_preamble(self) -> bool:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[:-keep]
            return False
        del self._buffer[: index + len(self._delimiter)]
        self._state = _AFTER_DELIMITER
        return True

    def _read_headers(self) -> bool:
        found = _blank_line(self._buffer)
        if found is None:
            if len(self._buffer) > _MAX_HEADER_BYTES:
                raise PacsProtocolError("multipart part headers are cut off or too long")
            return False
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
        self.parts += 1
        self._part = self._handler.begin(headers)
        self._state = _CONTENT
        return True

    def _read_content(self) -> bool:
        part = self._part
        assert part is not None
        index = self._buffer.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter)  # one more than a delimiter's prefix: the CR in front of it
            if len(self._buffer) > keep:
                self._hand_on(part, len(self._buffer) - keep)
            return False
        end = index - 1 if index and self._buffer[index - 1] == 0x0D else index
        if end:
            self._hand_on(part, end)
        del self._buffer[: index - end + len(self._delimiter)]
        self._part = None
        part.end()
        self._state = _AFTER_DELIMITER
        return True

    def _hand_on(self, part: PartConsumer, size: int) -> None:
        with memoryview(self._buffer) as view, view[:size] as piece:
            part.write(piece)
        del self._buffer[:size]


def _blank_line(buffer: bytearray) -> tuple[int, int] | None:
    """Where the header block ends (the first empty line, CRLF or LF) and its content starts."""
    candidates = []
    limit = _MAX_HEADER_BYTES + 4  # headers are short: never scan a large buffer for them
    for blank in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        if (index := buffer.find(blank, 0, limit)) >= 0:
            candidates.append((index, index + len(blank)))
    return min(candidates) if candidates else None


def content_length(headers: dict[str, str]) -> int | None:
    """The Content-Length of these headers, or None when absent or not a number."""
    value = headers.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


class WholeBody:
    """A body that is one part (not multipart): fed straight to one consumer."""

    def __init__(self, part: PartConsumer) -> None:
        self._part: PartConsumer | None = part

    def feed(self, data: memoryview) -> None:
        assert self._part is not None
        self._part.write(data)

    def close(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            part.end()

    def abort(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            part.abort()
