"""Bearer tokens that expire and servers that close kept-alive connections: requests keep
working, invisibly. Against the embedded PACS over real HTTP on 127.0.0.1."""

from __future__ import annotations

import shlex
import sys

import pytest
import trio

from tests.unit.helpers import all_files, filesystem_over, read_all
from trolleyfs.backends.auth import ClientCredentials, CommandToken, token_and_lifetime
from trolleyfs.errors import PacsRefused
from trolleyfs.testing.tokens import TEST_TOKEN_PATH, TOKEN_PATH, TokenIssuer


def print_token_command(pacs, as_text: bool) -> str:
    url = f"{pacs.base_url}{TEST_TOKEN_PATH}{'?format=text' if as_text else ''}"
    script = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
    return shlex.join([sys.executable, "-c", script, url])


def credentials_file(tmp_path, issuer: TokenIssuer, secret: str | None = None):
    path = tmp_path / "credentials.toml"
    path.write_text(f'client_id = "{issuer.client_id}"\nclient_secret = "{secret or issuer.client_secret}"\n')
    path.chmod(0o600)
    return path


def auth_options(pacs, tmp_path, way: str) -> dict:
    if way == "oauth2":
        return {"oauth2_token_url": f"{pacs.base_url}{TOKEN_PATH}", "credentials_file": credentials_file(tmp_path, pacs.tokens)}
    return {"token_command": print_token_command(pacs, as_text=way == "command-text")}


@pytest.mark.parametrize("way", ["oauth2", "command-json", "command-text"])
async def test_tokens_that_expire_between_reads_are_renewed_invisibly(pacs, tmp_path, way):
    pacs.tokens = TokenIssuer()
    async with filesystem_over(pacs, tmp_path, readahead_max=0, retries=0, **auth_options(pacs, tmp_path, way)) as fs:
        files = list((await all_files(fs)).values())
        for index, node in enumerate(files):
            if index % 10 == 5:
                pacs.tokens.expire_all()  # the server ends every token it gave
            assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
    assert len(pacs.tokens.issued) >= 1 + len(files) // 10
    assert fs.stats()["errors"] == {}


async def test_a_token_is_renewed_before_it_expires_when_its_lifetime_is_known(pacs, mock_clock):
    pacs.tokens = TokenIssuer(lifetime=100)
    source = ClientCredentials(f"{pacs.base_url}{TOKEN_PATH}", pacs.tokens.client_id, pacs.tokens.client_secret, "",
                               timeout=5)
    try:
        first = await source.token()
        mock_clock.jump(80)  # trio's clock only: the PACS's tokens live on
        assert await source.token() == first
        mock_clock.jump(15)  # under 10 s of its 100 left: renewed before any server refuses it
        assert await source.token() != first
    finally:
        await source.aclose()
    assert len(pacs.tokens.issued) == 2


async def test_requests_refused_together_share_one_renewal(pacs):
    pacs.tokens = TokenIssuer()
    source = CommandToken(print_token_command(pacs, as_text=True), timeout=10)
    refused = await source.token()
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(source.renew, refused)
    assert len(pacs.tokens.issued) == 2


@pytest.mark.parametrize("way", ["oauth2", "command"])
async def test_credentials_the_server_refuses_are_eacces_with_no_secret_in_the_message(pacs, tmp_path, way):
    pacs.tokens = TokenIssuer()
    if way == "oauth2":
        source = ClientCredentials(f"{pacs.base_url}{TOKEN_PATH}", pacs.tokens.client_id, "wrong-secret-42", "",
                                   timeout=5)
    else:
        source = CommandToken(shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"]), timeout=10)
    with pytest.raises(PacsRefused) as raised:
        await source.token()
    assert "wrong-secret-42" not in str(raised.value)
    assert raised.value.errno == 13


def test_a_command_may_print_the_token_alone_or_oauth2_json():
    assert token_and_lifetime("abc\n") == ("abc", None)
    assert token_and_lifetime('{"access_token": "abc", "expires_in": 60}') == ("abc", 60.0)
    assert token_and_lifetime('{"token": "abc"}') == ("abc", None)
    assert token_and_lifetime("{not json") == ("", None)


async def test_a_kept_alive_connection_the_server_closed_is_retried_once_invisibly(pacs, tmp_path):
    """With retries=0: the one silent resend is not a retry, it is how a pooled client must work."""
    pacs.drop_reused_connections = True
    async with filesystem_over(pacs, tmp_path, retries=0, readahead_max=0, downloader="wado-uri",
                               wado_uri_url=pacs.wado_uri_url) as fs:
        files = list((await all_files(fs)).values())[:5]
        for node in files:
            assert await read_all(fs, node.inode) == pacs.instances[node.uid].data
    assert pacs.dropped_connections >= 3
