"""Bearer tokens for the embedded PACS: an OAuth2 token endpoint (client credentials grant,
RFC 6749 §4.4, client authenticated with HTTP basic) and the check of ``Authorization: Bearer``
on every DICOMweb request (RFC 6750: 401 with ``WWW-Authenticate: Bearer error="invalid_token"``).

Tokens live ``lifetime`` seconds; ``expire_all`` ends them at once, so that a test can make the
tokens a mount holds expire in the middle of its reads, deterministically.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time

TOKEN_PATH = "/oauth2/token"
TEST_TOKEN_PATH = "/test-token"
"""Issues a token without client credentials, for a ``token_command`` in tests: JSON like the
token endpoint, or ``?format=text`` for the token alone."""


class TokenIssuer:
    def __init__(self, client_id: str = "trolleyfs-test", client_secret: str | None = None, lifetime: float = 300) -> None:
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(16)
        self.lifetime = lifetime
        self.issued: list[str] = []
        """Every token handed out, in order."""
        self.refused = 0
        """Requests turned away for a missing, unknown or expired token."""
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def _new_token(self) -> dict:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued.append(token)
            self._expiry[token] = time.monotonic() + self.lifetime
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}

    def token_endpoint(self, authorization: str, form: dict[str, str]) -> tuple[int, dict]:
        """(status, JSON body) of a POST to the token endpoint."""
        if authorization != _basic(self.client_id, self.client_secret):
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        return 200, self._new_token()

    def test_token(self, as_text: bool) -> bytes:
        answer = self._new_token()
        return answer["access_token"].encode() + b"\n" if as_text else json.dumps(answer).encode()

    def accepts(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            valid = scheme.lower() == "bearer" and self._expiry.get(token, 0.0) > time.monotonic()
            if not valid:
                self.refused += 1
        return valid

    def expire_all(self) -> None:
        with self._lock:
            self._expiry.clear()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
