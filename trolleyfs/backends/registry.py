"""Backends by name: builds the searcher and downloader a Config asks for, sharing one HTTP client
per server and one DIMSE peer, and starting the storage SCP that C-MOVE needs."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import httpx

from trolleyfs.backends.auth import BearerAuth, ClientCredentials, CommandToken, StaticToken
from trolleyfs.backends.base import Downloader, Searcher
from trolleyfs.backends.dcmtk_get import DcmtkGet
from trolleyfs.backends.dicom_qr import DicomQR
from trolleyfs.backends.dimse import DimsePeer
from trolleyfs.backends.dimse_retrieve import CGet, CMove, StorageSCP
from trolleyfs.backends.http import HttpSession
from trolleyfs.backends.mint import Mint
from trolleyfs.backends.qido_rs import QidoRS
from trolleyfs.backends.rad69 import Rad69
from trolleyfs.backends.wado_rs import WadoRS
from trolleyfs.backends.wado_uri import WadoURI
from trolleyfs.config import Config


def tls_verification(config: Config) -> ssl.SSLContext | bool:
    """The TLS settings of https:// requests: the system's CAs unless told otherwise."""
    if not (config.ca_bundle or config.client_cert):
        return True
    context = ssl.create_default_context(cafile=str(config.ca_bundle) if config.ca_bundle else None)
    if config.client_cert:
        context.load_cert_chain(str(config.client_cert), str(config.client_key) if config.client_key else None)
    return context


def http_auth(config: Config, stack: AsyncExitStack) -> httpx.Auth | None:
    """The authentication of every DICOMweb request: the one way the config names, if any."""

    def client_credentials() -> httpx.Auth:
        source = ClientCredentials(
            config.oauth2_token_url, config.client_id, config.client_secret, config.oauth2_scope,
            timeout=config.timeout, verify=tls_verification(config),
        )
        stack.push_async_callback(source.aclose)
        return BearerAuth(source)

    ways: dict[str, Callable[[], httpx.Auth]] = {
        "username": lambda: httpx.BasicAuth(config.username, config.password),
        "token": lambda: BearerAuth(StaticToken(config.token)),
        "token_command": lambda: BearerAuth(CommandToken(config.token_command, timeout=config.timeout)),
        "oauth2_token_url": client_credentials,
    }
    return next((make() for option, make in ways.items() if getattr(config, option)), None)


class Backends:
    """The searcher and downloader of a mount, and the HTTP sessions they share (one per server)."""

    def __init__(self, config: Config, stack: AsyncExitStack) -> None:
        self._config = config
        self._stack = stack
        self._sessions: dict[str, HttpSession] = {}
        self._peer: DimsePeer | None = None
        self._auth = http_auth(config, stack)
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
                auth=self._auth,
                verify=tls_verification(config),
                min_transfer_rate=config.min_transfer_rate,
            )
            self._stack.push_async_callback(session.aclose)
            self._sessions[server] = session
        return self._sessions[server]

    def _dimse_peer(self) -> DimsePeer:
        if self._peer is None:
            config = self._config
            self._peer = DimsePeer(
                config.dimse_node,
                calling_aet=config.calling_aet,
                acse_timeout=config.acse_timeout or config.timeout,
                dimse_timeout=config.dimse_timeout or config.timeout,
                network_timeout=config.network_timeout or config.timeout,
                max_associations=config.max_associations,
                idle_time=config.dimse_idle_time,
            )
            self._stack.callback(self._peer.close)
        return self._peer

    def _storage_scp(self) -> StorageSCP:
        config = self._config
        scp = StorageSCP(config.move_aet or config.calling_aet, config.move_host, config.move_port, self._dimse_peer())
        scp.start()
        self._stack.callback(scp.stop)
        return scp

    def _searcher(self) -> Searcher:
        url = self._config.resolved_qido_url
        factories: dict[str, Callable[[], Searcher]] = {
            "qido-rs": lambda: QidoRS(self._session(url), url),
            "dicom-qr": lambda: DicomQR(self._dimse_peer()),
            "mint": lambda: Mint(self._session(self._config.resolved_mint_url), self._config.resolved_mint_url),
        }
        return factories[self._config.resolved_searcher]()

    def _downloader(self) -> Downloader:
        config = self._config
        factories: dict[str, Callable[[], Downloader]] = {
            "wado-rs": lambda: WadoRS(self._session(config.resolved_wado_rs_url), config.resolved_wado_rs_url),
            "wado-uri": lambda: WadoURI(self._session(config.wado_uri_url), config.wado_uri_url),
            "c-get": lambda: CGet(self._dimse_peer()),
            "c-get-dcmtk": lambda: DcmtkGet(
                config.dimse_node, config.calling_aet, acse_timeout=config.acse_timeout or config.timeout,
                dimse_timeout=config.dimse_timeout or config.timeout,
                network_timeout=config.network_timeout or config.timeout, max_associations=config.max_associations,
            ),
            "c-move": lambda: CMove(self._dimse_peer(), self._storage_scp()),
            "rad69": lambda: Rad69(
                self._session(config.rad69_url), config.rad69_url, config.rad69_repository_id, config.rad69_batch_size
            ),
        }
        return factories[config.resolved_downloader]()
