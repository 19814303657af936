"""Bulk HTTP bodies at the wire's speed: blocking HTTP/1.1 exchanges driven from worker threads.

A series answer is ~100 MB. Read through httpx on the event loop it costs the daemon's one thread
~0.4 s of Python per series (h11 and trio handle each 64 KiB chunk), time the kernel's FUSE
requests then wait for. Here the standard library's ``http.client`` reads the body in a worker
thread in reads of up to ``READ_SIZE``; the socket calls release the GIL, so the event loop goes
on answering the kernel while the bytes arrive. Measured on this machine (106 MB series from
Orthanc 1.10, medians of 5): curl 0.244 s, http.client 0.239 s, httpx on trio 0.367 s — so the
standard library reaches the wire and pycurl (a C dependency) would buy nothing.

This module knows sockets, not policy: :class:`~trolleyfs.backends.http.HttpSession` decides
retries, authentication, status codes and which thread runs what. Connections are kept alive in
a small per-origin pool; :meth:`Exchange.abort` (from any thread) shuts the socket down so that a
blocked read returns at once — that is how trio's cancellation reaches a worker thread.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

READ_SIZE = 1024 * 1024
"""Largest read of a body: one recv of whatever the socket holds, up to this."""
_DEAD_CONNECTION = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected, ConnectionAbortedError)


class Aborted(Exception):
    """The exchange was aborted from another thread (its caller was cancelled)."""


class TooSlow(TimeoutError):
    """The body arrived slower than the minimum transfer rate."""


class DeadConnection(ConnectionError):
    """A kept-alive connection the server had closed without saying so: nothing was answered."""


class ConnectFailed(ConnectionError):
    """No connection could be made (refused, unreachable, timed out, TLS handshake failed)."""


Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80)


class ConnectionPool:
    """Idle kept-alive connections per origin, shared by the worker threads of one session."""

    def __init__(self, timeout: float, ssl_context: ssl.SSLContext | None, max_idle: int) -> None:
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def take(self, origin: Origin, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to ``origin`` (a new one if ``fresh``) and whether it was kept alive (it
        may be dead). A new one is not connected yet."""
        with self._lock:
            idle = self._idle.get(origin)
            if idle and not fresh:
                return idle.pop(), True
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl_context), False
        return http.client.HTTPConnection(host, port, timeout=self.timeout), False

    def give_back(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self._max_idle:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            connections = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for connection in connections:
            connection.close()


class Exchange:
    """One request and its answer on a pooled connection. ``send`` and ``read_body`` block and
    run in a worker thread; ``abort`` may be called from any thread at any time."""

    def __init__(
        self, pool: ConnectionPool, method: str, url: str, headers: dict[str, str], body: bytes | None,
        fresh: bool = False,
    ) -> None:
        self._pool = pool
        self._fresh = fresh
        self._method = method
        self._origin = origin_of(url)
        parts = urlsplit(url)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = headers
        self._body = body
        self._connection: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._aborted = False
        self._lock = threading.Lock()
        self.status = 0
        self.headers: list[tuple[str, str]] = []

    def send(self) -> None:
        """Send the request and read the answer's status and headers. A kept-alive connection
        found dead before any answer raises DeadConnection (safe to send again)."""
        connection, reused = self._pool.take(self._origin, self._fresh)
        with self._lock:
            if self._aborted:
                connection.close()
                raise Aborted()
            self._connection = connection
        if not reused:
            try:
                connection.connect()
            except OSError as exc:
                self._drop()
                raise ConnectFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        try:
            connection.request(self._method, self._target, body=self._body, headers=self._headers)
            response = connection.getresponse()
        except _DEAD_CONNECTION as exc:
            self._drop()
            if self._aborted:
                raise Aborted() from exc
            if reused:
                raise DeadConnection(str(exc) or type(exc).__name__) from exc
            raise
        except BaseException as exc:
            self._drop()
            if self._aborted:
                raise Aborted() from exc
            raise
        self._response = response
        self.status = response.status
        self.headers = response.getheaders()

    def header(self, name: str) -> str:
        """The first value of header ``name`` (case-insensitive), or ''."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), "")

    def read_body(self, consume: Callable[[memoryview], None], min_bytes_per_window: float, window: float) -> int:
        """Hand the body to ``consume`` as it arrives (decoded if the server compressed it
        despite ``Accept-Encoding: identity``); the number of body bytes received. A body slower
        than ``min_bytes_per_window`` over ``window`` seconds raises TooSlow (0: no minimum)."""
        response = self._response
        assert response is not None, "send() first"
        decode = _decoder(self.header("content-encoding"))
        received = 0
        window_start, window_bytes = time.monotonic(), 0
        try:
            while chunk := response.read1(READ_SIZE):
                received += len(chunk)
                window_bytes += len(chunk)
                consume(memoryview(decode(chunk)) if decode else memoryview(chunk))
                if min_bytes_per_window:
                    now = time.monotonic()
                    if now - window_start >= window:
                        if window_bytes < min_bytes_per_window:
                            rate = window_bytes / (now - window_start)
                            raise TooSlow(f"the answer trickles in at {rate:.0f} bytes/s, below min_transfer_rate")
                        window_start, window_bytes = now, 0
            if self._aborted:
                raise Aborted()
            if response.length:  # read1 ends quietly where the connection did, before Content-Length
                raise http.client.IncompleteRead(b"", response.length)
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            if self._aborted:
                raise Aborted() from exc
            raise
        return received

    def head_of_body(self, size: int = 512) -> bytes:
        """The start of the body (of an error answer), for a DEBUG line; b'' if unreadable."""
        try:
            return self._response.read1(size) if self._response is not None else b""
        except (OSError, http.client.HTTPException):
            return b""

    def finish(self) -> None:
        """Keep the connection for the next request when its answer was read to the end and the
        server keeps it open; close it otherwise."""
        response, connection = self._response, self._connection
        self._response = self._connection = None
        if connection is None:
            return
        if response is not None and response.isclosed() and not response.will_close and not self._aborted:
            self._pool.give_back(self._origin, connection)
        else:
            connection.close()

    def abort(self) -> None:
        """Make a blocked ``send`` or ``read_body`` return at once (with Aborted)."""
        with self._lock:
            self._aborted = True
            connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _drop(self) -> None:
        connection, self._connection, self._response = self._connection, None, None
        if connection is not None:
            connection.close()


def _decoder(content_encoding: str) -> Callable[[bytes], bytes] | None:
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, told apart by zlib
        return inflater.decompress
    raise http.client.HTTPException(f"answer in Content-Encoding {encoding!r}, which cannot be decoded")
