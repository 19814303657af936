"""How DICOMweb requests authenticate: HTTP basic, or a bearer token that is static, printed by a
command (``token_command``, as rclone's ``bearer_token_command``: ``gcloud auth
print-access-token``) or obtained with OAuth2 client credentials (``oauth2_token_url``).

One :class:`BearerAuth` serves every server of a mount. Its :class:`TokenSource` keeps the
current token and renews it before it expires (when its lifetime is known) and whenever a server
answers 401; concurrent requests that meet a 401 together share one renewal, and the request is
sent once more with the new token. A token never appears in a log line or an error message.
"""

from __future__ import annotations

import json
import shlex
import ssl
from collections.abc import AsyncGenerator
from typing import Protocol

import httpx
import trio

from trolleyfs.errors import PacsError, PacsRefused

_RENEW_AHEAD = 0.1
"""A token is renewed when less than this share of its lifetime is left (at least 5 s before its
end, but never in the first half of its life)."""
_MIN_RENEW_AHEAD = 5.0


class TokenSource(Protocol):
    async def token(self) -> str:
        """A token to send now."""
        ...

    async def renew(self, refused: str) -> str:
        """A new token after ``refused`` was turned down (or it, when that is all there is)."""
        ...


class StaticToken:
    """A token given once (``token`` in the credentials file): there is nothing to renew."""

    def __init__(self, value: str) -> None:
        self._value = value

    async def token(self) -> str:
        return self._value

    async def renew(self, refused: str) -> str:
        return self._value


class _RenewedToken:
    """A token fetched on demand and kept until it nears its end or is refused."""

    def __init__(self) -> None:
        self._value = ""
        self._renew_at = 0.0
        self._lock = trio.Lock()

    async def token(self) -> str:
        if self._value and trio.current_time() < self._renew_at:
            return self._value
        return await self.renew(self._value)

    async def renew(self, refused: str) -> str:
        async with self._lock:
            if self._value != refused and trio.current_time() < self._renew_at:
                return self._value  # someone else renewed it while we waited
            value, lifetime = await self._fetch()
            if not value:
                raise PacsRefused(f"{self.describe()} gave an empty token")
            self._value = value
            self._renew_at = trio.current_time() + (_renewal_after(lifetime) if lifetime else float("inf"))
            return value

    async def _fetch(self) -> tuple[str, float | None]:
        """(token, seconds it lives or None when unknown)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _renewal_after(lifetime: float) -> float:
    ahead = min(max(_MIN_RENEW_AHEAD, lifetime * _RENEW_AHEAD), lifetime / 2)
    return lifetime - ahead


def token_and_lifetime(text: str) -> tuple[str, float | None]:
    """A command's output: the token alone on its first line, or an OAuth2-style JSON object
    with ``access_token`` (or ``token``) and ``expires_in`` seconds."""
    text = text.strip()
    if text.startswith("{"):
        try:
            answer = json.loads(text)
        except ValueError:
            return "", None
        if not isinstance(answer, dict):
            return "", None
        value = answer.get("access_token") or answer.get("token") or ""
        lifetime = answer.get("expires_in")
        return str(value), float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else None
    return (text.splitlines() or [""])[0].strip(), None


class CommandToken(_RenewedToken):
    """Runs ``command`` (split like a shell would, but run without one) and uses what it prints."""

    def __init__(self, command: str, timeout: float) -> None:
        super().__init__()
        self._argv = shlex.split(command)
        self._timeout = timeout

    def describe(self) -> str:
        return f"token_command {self._argv[0]!r}"

    async def _fetch(self) -> tuple[str, float | None]:
        try:
            with trio.fail_after(self._timeout):
                done = await trio.run_process(self._argv, capture_stdout=True, capture_stderr=True, check=False)
        except trio.TooSlowError:
            raise PacsError(f"{self.describe()} did not finish within {self._timeout:g}s") from None
        except OSError as exc:
            raise PacsRefused(f"{self.describe()} cannot be run: {exc.strerror}") from None
        if done.returncode != 0:
            raise PacsRefused(f"{self.describe()} exited with status {done.returncode}")
        return token_and_lifetime(done.stdout.decode("utf-8", "replace"))


class ClientCredentials(_RenewedToken):
    """OAuth2 client credentials grant (RFC 6749 §4.4), the client authenticating with HTTP basic
    (§2.3.1) at ``token_url``."""

    def __init__(
        self, token_url: str, client_id: str, client_secret: str, scope: str, *, timeout: float,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__()
        self._url = token_url
        self._scope = scope
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth(client_id, client_secret), timeout=httpx.Timeout(timeout), verify=verify
        )

    def describe(self) -> str:
        return f"the OAuth2 token endpoint {httpx.URL(self._url).copy_with(query=None)}"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _fetch(self) -> tuple[str, float | None]:
        form = {"grant_type": "client_credentials", **({"scope": self._scope} if self._scope else {})}
        try:
            response = await self._client.post(self._url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise PacsError(f"{self.describe()}: {type(exc).__name__}") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code in (400, 401, 403):
            reason = str(answer.get("error", ""))[:40]  # RFC 6749 §5.2: a code such as invalid_client
            raise PacsRefused(f"{self.describe()} refused the client credentials: HTTP {response.status_code} {reason}")
        if response.status_code != 200 or "access_token" not in answer:
            raise PacsError(f"{self.describe()}: HTTP {response.status_code}, no access_token")
        lifetime = answer.get("expires_in")
        return str(answer["access_token"]), float(lifetime) if isinstance(lifetime, (int, float)) else None


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer`` from a TokenSource; a 401 renews the token and sends again once."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.source.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            renewed = await self.source.renew(token)
            if renewed != token:
                request.headers["Authorization"] = f"Bearer {renewed}"
                yield request
