"""Backends by name: builds the searcher and downloader a Config asks for, sharing HTTP clients."""

from __future__ import annotations

from contextlib import AsyncExitStack
from urllib.parse import urlsplit

from trolleyfs.backends.base import Downloader, Searcher
from trolleyfs.backends.http import HttpSession
from trolleyfs.backends.qido_rs import QidoRS
from trolleyfs.backends.wado_rs import WadoRS
from trolleyfs.backends.wado_uri import WadoURI
from trolleyfs.config import Config


class Backends:
    """The searcher and downloader of a mount, and the HTTP sessions they share (one per server)."""

    def __init__(self, config: Config, stack: AsyncExitStack) -> None:
        self._config = config
        self._stack = stack
        self._sessions: dict[str, HttpSession] = {}
        self.searcher = self._searcher()
        self.downloader = self._downloader()

    def _session(self, url: str) -> HttpSession:
        parts = urlsplit(url)
        server = f"{parts.scheme}://{parts.netloc}"
        if server not in self._sessions:
            config = self._config
            session = HttpSession(
                timeout=config.timeout,
                retries=config.retries,
                max_connections=config.max_connections,
                username=config.username,
                password=config.password,
            )
            self._stack.push_async_callback(session.aclose)
            self._sessions[server] = session
        return self._sessions[server]

    def _searcher(self) -> Searcher:
        url = self._config.resolved_qido_url
        return {"qido-rs": lambda: QidoRS(self._session(url), url)}[self._config.searcher]()

    def _downloader(self) -> Downloader:
        config = self._config
        factories = {
            "wado-rs": lambda: WadoRS(self._session(config.resolved_wado_rs_url), config.resolved_wado_rs_url),
            "wado-uri": lambda: WadoURI(self._session(config.wado_uri_url), config.wado_uri_url),
        }
        return factories[config.downloader]()
