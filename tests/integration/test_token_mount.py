"""Token authentication through a real kernel mount: tokens that expire while a series is being
read, and secrets that never show where other users or logs can see them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_auth import auth_options, credentials_file
from trolleyfs.testing.tokens import TOKEN_PATH, TokenIssuer


@pytest.mark.parametrize("way", ["oauth2", "command-text"])
def test_tokens_expiring_during_a_long_read_never_fail_it(mount, pacs, tmp_path, way):
    pacs.tokens = TokenIssuer()
    mounted = mount(pacs.dicomweb_url, listing_ttl=0, **auth_options(pacs, tmp_path, way))
    files = mounted.files()
    for index, path in enumerate(files):  # the first read also reads the rest of its series ahead
        if index % 7 == 3:
            pacs.tokens.expire_all()
        assert path.read_bytes() == pacs.instances[path.name[:-4].rsplit("_", 1)[-1]].data
    stats = mounted.stats()
    assert stats["errors"] == {}
    assert len(pacs.tokens.issued) > len(files) // 7 and pacs.tokens.refused > 0
    secrets = [pacs.tokens.client_secret, *pacs.tokens.issued]
    daemon_argv = Path(f"/proc/{mounted.process.pid}/cmdline").read_bytes().decode(errors="replace")
    where_others_look = "\n".join([mounted.log_text(), Path("/proc/mounts").read_text(), daemon_argv])
    assert not [secret for secret in secrets if secret in where_others_look]


def test_a_refused_client_secret_fails_the_mount_naming_the_token_endpoint(mount, pacs, tmp_path):
    pacs.tokens = TokenIssuer()
    options = {"oauth2_token_url": f"{pacs.base_url}{TOKEN_PATH}",
               "credentials_file": credentials_file(tmp_path, pacs.tokens, secret="not-the-secret")}
    with pytest.raises(RuntimeError, match="refused the client credentials") as raised:
        mount(pacs.dicomweb_url, **options)
    assert "not-the-secret" not in str(raised.value)
