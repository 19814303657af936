"""The shared HTTP client of the DICOMweb backends: one session per server, two paths.

- Searches and other small answers (``get``, ``stream``) go through a pooled httpx.AsyncClient
  on the event loop.
- Instance bodies (``receive``) — WADO-RS, WADO-URI, RAD-69 — are read in a worker thread over
  blocking connections (:mod:`trolleyfs.backends.wire`) and handed, still in that thread, to the
  body consumer the backend gives; the event loop stays free for the kernel's requests.

Both share the policy every backend needs: connect/read timeouts, a minimum transfer rate (a body
trickling in below ``min_transfer_rate`` over a ``timeout`` window is abandoned, so no read can be
held forever by a PACS that sends a byte just often enough), bounded connections (background
work may not take the last ``reserved`` bulk connections, which foreground reads keep), the same
authentication, redirects, retries with exponential backoff on connect errors, 429 and 5xx, and
the translation of every error into the trolleyfs exception tree, so no failure is silent.
Cancelling a ``receive`` aborts its socket, so the worker thread returns at once.

Query strings are built here by hand, because Orthanc (1.10) does not percent-decode them: the
DICOM wildcard and separator characters ``* ? ^`` must travel raw or nothing matches.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import quote

import httpx
import trio

from trolleyfs.backends.wire import Aborted, ConnectFailed, ConnectionPool, DeadConnection, Exchange, origin_of
from trolleyfs.errors import NotFound, PacsBadRequest, PacsError, PacsProtocolError, PacsRefused
from trolleyfs.model import is_uid
from trolleyfs.priority import Slots, reserved_for_readers

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RAW_QUERY_CHARACTERS = "*?^-.,/"
_MAX_BACKOFF = 5.0
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
T = TypeVar("T")
A = TypeVar("A")


class BodyConsumer(Protocol):
    """What a backend does with an instance body; called in the worker thread that reads it."""

    def feed(self, data: memoryview) -> None:
        """The next bytes of the body; ``data`` is only valid during the call."""
        ...

    def close(self) -> None:
        """The body ended normally (raise if it is incomplete)."""
        ...

    def abort(self) -> None:
        """The transfer failed: throw away whatever is half received."""
        ...


class Answer(Protocol):
    status: int

    def header(self, name: str) -> str: ...


def build_url(base: str, path: str = "", params: Iterable[tuple[str, str]] = ()) -> str:
    """Join ``base`` and ``path`` and append ``params``, leaving DICOM wildcards unescaped."""
    url = base.rstrip("/") + ("/" + path.lstrip("/") if path else "")
    query = "&".join(
        f"{quote(key, safe='')}={quote(str(value), safe=_RAW_QUERY_CHARACTERS)}" for key, value in params
    )
    return f"{url}?{query}" if query else url


def checked_uid(uid: str) -> str:
    """``uid`` itself when it is a DICOM UID. Anything else from a PACS (``/``, ``?``, ``#``, ``..``)
    is refused before it reaches a URL path, a query string or a request body."""
    if not is_uid(uid):
        raise PacsProtocolError("the PACS named something by a value that is not a DICOM UID; refused")
    return uid


def loggable(url: str) -> str:
    """``url`` without its query string, which may hold patient names and IDs: logs and error
    messages at INFO and above carry no patient data."""
    path, sep, _ = url.partition("?")
    return f"{path}?…" if sep else path


class HttpSession:
    """A pooled client for one server, with retries and error translation."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        max_connections: int,
        auth: httpx.Auth | None = None,
        verify: ssl.SSLContext | bool = True,
        backoff: float = 0.2,
        min_transfer_rate: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._pool_size = max_connections
        self._auth = auth
        self._bulk_slots = Slots(max_connections, reserved_for_readers(max_connections))
        self._wire = ConnectionPool(timeout, _ssl_context(verify), max_idle=max_connections)
        self._minimum_per_window = min_transfer_rate * timeout
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        inner = transport or httpx.AsyncHTTPTransport(verify=verify, limits=limits)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            auth=auth,
            transport=_MinimumRate(inner, min_transfer_rate, timeout) if min_transfer_rate else inner,
            follow_redirects=True,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
        self._wire.close()

    async def receive(
        self,
        url: str,
        open_body: Callable[[Answer], BodyConsumer],
        headers: dict[str, str] | None = None,
        method: str = "GET",
        content: bytes | None = None,
    ) -> None:
        """Send the request (retried, authenticated and redirected like ``stream``) and hand its
        body to the consumer ``open_body`` makes of the answer's status and headers. The body is
        read, and the consumer fed, in a worker thread; cancelling this aborts the transfer."""
        async with self._bulk_slots.slot():
            exchange = await self._send_with_retries_bulk(method, url, headers or {}, content)
            try:
                consumer = open_body(exchange)
                await self._in_thread(exchange, lambda: self._read_into(exchange, consumer), method, url)
            finally:
                exchange.finish()

    def _read_into(self, exchange: Exchange, consumer: BodyConsumer) -> None:
        try:
            exchange.read_body(consumer.feed, self._minimum_per_window, self.timeout)
            consumer.close()
        except BaseException:
            consumer.abort()
            raise

    async def _in_thread(self, exchange: Exchange, work: Callable[[], T], method: str, url: str) -> T:
        """Run ``work`` (blocking on ``exchange``) in a worker thread; a cancellation aborts the
        exchange, so the thread returns at once and the cancellation goes on. Socket errors become
        PacsError, except those ``_send_with_retries_bulk`` decides on (ConnectFailed,
        RemoteDisconnected, DeadConnection)."""
        finished = False

        async def abort_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                if not finished:
                    exchange.abort()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(abort_when_cancelled)
                try:
                    result = await trio.to_thread.run_sync(work)
                finally:
                    finished = True
                    nursery.cancel_scope.cancel()
        except Aborted:
            await trio.lowlevel.checkpoint()  # raises the cancellation that caused it
            raise PacsError(f"{method} {loggable(url)}: aborted") from None
        except (ConnectFailed, http.client.RemoteDisconnected, DeadConnection):
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise PacsError(f"{method} {loggable(url)}: {_describe(exc) if str(exc) else 'timed out'}") from exc
        return result

    async def _send_with_retries_bulk(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> Exchange:
        async def refused(exchange: Exchange) -> _Refused | None:
            if exchange.status < 300:
                return None
            body = await self._in_thread(exchange, exchange.head_of_body, method, url)
            exchange.finish()
            return _Refused(exchange.status, _printable(body), exchange.header("retry-after"))

        return await self._retrying(
            method, url, lambda: self._send_following_redirects(method, url, headers, content),
            (ConnectFailed, http.client.RemoteDisconnected), lambda exc: True, refused,
        )

    async def _retrying(
        self,
        method: str,
        url: str,
        send: Callable[[], Awaitable[A]],
        transport_errors: tuple[type[BaseException], ...],
        retryable: Callable[[BaseException], bool],
        refused: Callable[[A], Awaitable[_Refused | None]],
    ) -> A:
        """The retry policy of both paths: ``send`` once per attempt; one of ``transport_errors``
        that is ``retryable`` (nothing was read), a 429 and a 5xx are sent again after a backoff;
        ``refused`` closes an unsuccessful answer and says what it was (None: a success)."""
        for attempt in range(self.retries + 1):
            last_attempt = attempt == self.retries
            try:
                answer = await send()
            except transport_errors as exc:
                if _untrusted_certificate(exc):
                    raise PacsRefused(
                        f"{method} {loggable(url)}: the server's TLS certificate is not trusted (see ca_bundle=): {exc}"
                    ) from exc
                if last_attempt or not retryable(exc):
                    raise PacsError(f"{method} {loggable(url)}: {_describe(exc)}") from exc
                log.info("%s %s: %s; retrying", method, loggable(url), _describe(exc))
                await trio.sleep(self._delay(attempt, None))
                continue
            refusal = await refused(answer)
            if refusal is None:
                return answer
            # the body may echo what we asked, patient names included: only DEBUG carries it
            log.debug("%s %s: HTTP %d: %s", method, loggable(url), refusal.status, refusal.body)
            if refusal.status in RETRY_STATUSES and not last_attempt:
                log.info("%s %s: HTTP %d; retrying", method, loggable(url), refusal.status)
                await trio.sleep(self._delay(attempt, refusal.retry_after))
                continue
            raise _refusal(method, url, refusal.status)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _send_following_redirects(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> Exchange:
        authenticated = True
        for _ in range(_MAX_REDIRECTS + 1):
            exchange = await self._send_authenticated(method, url, headers, content, authenticated)
            location = exchange.header("location")
            if exchange.status not in _REDIRECTS or not location:
                return exchange
            exchange.finish()
            target = str(httpx.URL(url).join(location))
            authenticated = authenticated and origin_of(target) == origin_of(url)  # as httpx: no credentials elsewhere
            if exchange.status == 303:
                method, content = "GET", None
            url = target
        raise PacsProtocolError(f"{method} {loggable(url)}: more than {_MAX_REDIRECTS} redirects")

    async def _send_authenticated(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None, authenticated: bool
    ) -> Exchange:
        """Send once, letting the session's httpx.Auth set its headers and ask again after a 401
        (a renewed token), exactly as it does for the httpx path."""
        request = httpx.Request(method, url, headers={"User-Agent": "trolleyfs", **headers}, content=content)
        if self._auth is None or not authenticated:
            return await self._send_on_live_wire(request)
        flow = self._auth.async_auth_flow(request)
        request = await flow.__anext__()
        while True:
            exchange = await self._send_on_live_wire(request)
            try:
                request = await flow.asend(httpx.Response(exchange.status, headers=exchange.headers, request=request))
            except StopAsyncIteration:
                return exchange
            exchange.finish()

    async def _send_on_live_wire(self, request: httpx.Request) -> Exchange:
        """Send ``request``, again at once when it went out on a kept-alive connection the server
        had closed (see ``_send_on_live_connection``)."""
        headers = dict(request.headers.items())
        url = str(request.url)
        for _ in range(self._pool_size):
            exchange = Exchange(self._wire, request.method, url, headers, request.content or None)
            try:
                await self._in_thread(exchange, exchange.send, request.method, url)
            except DeadConnection:
                log.debug("%s %s: the connection was dead, sending again", request.method, loggable(url))
                continue
            return exchange
        exchange = Exchange(self._wire, request.method, url, headers, request.content or None, fresh=True)
        await self._in_thread(exchange, exchange.send, request.method, url)
        return exchange

    async def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        """GET ``url`` and read the whole body (for small answers such as QIDO-RS JSON)."""
        async with self.stream(url, headers) as response:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                raise PacsError(f"GET {loggable(url)}: {_describe(exc)}") from exc
        return response

    @asynccontextmanager
    async def stream(
        self, url: str, headers: dict[str, str] | None = None, method: str = "GET", content: bytes | None = None
    ) -> AsyncIterator[httpx.Response]:
        """Send the request (GET, or a POST of ``content`` for SOAP: every request we make only
        reads, so all may be retried) and yield the response with its body unread; httpx errors
        become PacsError."""
        response = await self._send_with_retries(method, url, headers or {}, content)
        try:
            yield response
        except httpx.HTTPError as exc:
            raise PacsError(f"{method} {loggable(url)}: {_describe(exc)}") from exc
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    async def _send_with_retries(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> httpx.Response:
        request = self._client.build_request(method, url, headers=headers, content=content)

        async def refused(response: httpx.Response) -> _Refused | None:
            if response.status_code < 300:
                return None
            body = await _short_body(response)
            await response.aclose()
            return _Refused(response.status_code, body, response.headers.get("Retry-After"))

        return await self._retrying(
            method, url, lambda: self._send_on_live_connection(request), (httpx.TransportError,),
            _retryable_transport_error, refused,
        )

    async def _send_on_live_connection(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; when the server had closed the kept-alive connection it went out on
        without saying so (it drops the connection before any answer), send it again at once.
        The dead connection leaves the pool, so this repeats at most once per pooled connection
        (a server closing idle connections closes them all) before the error counts. Every
        request we make only reads, so this is always safe."""
        for _ in range(self._pool_size):
            try:
                return await self._client.send(request, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                log.debug("%s %s: %s; the connection was dead, sending again", request.method,
                          loggable(str(request.url)), _describe(exc))
        return await self._client.send(request, stream=True)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * 2**attempt
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        return min(delay, _MAX_BACKOFF)


class _MinimumRate(httpx.AsyncBaseTransport):
    """Wraps a transport so that a response body arriving slower than ``bytes_per_second``,
    measured over windows of ``window`` seconds, ends in a ReadTimeout."""

    def __init__(self, inner: httpx.AsyncBaseTransport, bytes_per_second: int, window: float) -> None:
        self._inner = inner
        self._minimum = bytes_per_second * window
        self._window = window

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _RateGuardedStream(response.stream, self._minimum, self._window)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _RateGuardedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, minimum: float, window: float) -> None:
        self._inner = inner
        self._minimum = minimum
        self._window = window

    async def __aiter__(self) -> AsyncIterator[bytes]:
        window_start, received = trio.current_time(), 0
        async for chunk in self._inner:
            received += len(chunk)
            now = trio.current_time()
            if now - window_start >= self._window:
                if received < self._minimum:
                    rate = received / (now - window_start)
                    raise httpx.ReadTimeout(f"the answer trickles in at {rate:.0f} bytes/s, below min_transfer_rate")
                window_start, received = now, 0
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _refusal(method: str, url: str, status: int) -> PacsError:
    """The error of an answer with this (unsuccessful, final) status."""
    message = f"{method} {loggable(url)}: HTTP {status}"
    if status == 404:
        return NotFound(message)
    if status in (401, 403):
        return PacsRefused(f"{message}: the PACS refused our credentials")
    if status in RETRY_STATUSES:
        return PacsError(message)
    if status == 400:
        return PacsBadRequest(message)
    return PacsProtocolError(message)


def _ssl_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _printable(body: bytes) -> str:
    return body.decode("utf-8", "replace").strip()[:200]


@dataclass(frozen=True)
class _Refused:
    """An unsuccessful answer, already closed: its status, the start of its body, Retry-After."""

    status: int
    body: str
    retry_after: str | None


def _retryable_transport_error(exc: BaseException) -> bool:
    # A connect failure or a connection dropped before any answer: nothing was read, safe to repeat.
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError))


def _untrusted_certificate(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _short_body(response: httpx.Response) -> str:
    """The start of an error answer, for the message; whatever the transport already read."""
    try:
        if response.is_stream_consumed:
            head = response.content[:512]
        else:
            head = await anext(response.aiter_raw(512), b"")
    except (httpx.HTTPError, httpx.StreamError):
        return ""
    return _printable(head)
