"""The mount helper's option handling, secrets handling, and patient data kept out of messages."""

from __future__ import annotations

import pytest

from tests.unit.helpers import filesystem_over, walk
from trolleyfs.config import load_config
from trolleyfs.errors import ConfigError, TrolleyError
from trolleyfs.mount_helper import split_options

SOURCE = "http://127.0.0.1:8042/dicom-web"


def test_generic_mount_options_are_left_out_and_the_rest_kept():
    kept, dropped = split_options(
        "rw,noauto,nofail,_netdev,x-systemd.automount,x-systemd.idle-timeout=60,user,config=/etc/t.toml,"
        "allow_other,umask=027,default_permissions"
    )
    assert kept == {"config": "/etc/t.toml", "allow_other": "true", "umask": "027"}
    assert set(dropped) >= {"rw", "noauto", "nofail", "_netdev", "x-systemd.automount", "user"}


def test_secrets_only_from_a_private_file_or_the_environment(tmp_path):
    with pytest.raises(ConfigError, match="may not be given on the command line"):
        load_config({"source": SOURCE, "password": "x"}, {})
    config_file = tmp_path / "t.toml"
    config_file.write_text('token = "abc"\n')
    with pytest.raises(ConfigError, match="may not be given on config file"):
        load_config({"source": SOURCE, "config": str(config_file)}, {})
    secrets = tmp_path / "credentials"
    secrets.write_text('username = "u"\npassword = "p"\n')
    secrets.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        load_config({"source": SOURCE, "credentials_file": str(secrets)}, {})
    secrets.chmod(0o600)
    config = load_config({"source": SOURCE, "credentials_file": str(secrets)}, {})
    assert (config.username, config.password) == ("u", "p")
    assert "p'" not in repr(config) and "password='p'" not in str(config)
    from_env = load_config({"source": SOURCE}, {"TROLLEYFS_TOKEN": "t0k"})
    assert from_env.token == "t0k"


def test_umask_is_octal():
    assert load_config({"source": SOURCE, "umask": "027"}, {}).umask == 0o027


async def test_errors_carry_no_patient_id(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path, retries=0) as fs:
        patients = await walk(fs, "/patients")
        pacs.faults.add("qido", "status", status=500)
        with pytest.raises(TrolleyError) as raised:
            await fs.lookup(patients.inode, "TROLLEY-001")
        assert "TROLLEY-001" not in str(raised.value)
        assert "500" in str(raised.value)


async def test_a_token_is_sent_as_a_bearer_header_and_401_is_a_refusal():
    import errno

    import httpx

    from trolleyfs.backends.auth import BearerAuth, StaticToken
    from trolleyfs.backends.http import HttpSession
    from trolleyfs.errors import PacsRefused

    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401 if request.url.path == "/denied" else 200, text="[]")

    session = HttpSession(timeout=5, retries=0, max_connections=1, auth=BearerAuth(StaticToken("t0k")),
                          transport=httpx.MockTransport(answer))
    try:
        await session.get("http://pacs.invalid/studies")
        with pytest.raises(PacsRefused) as raised:
            await session.get("http://pacs.invalid/denied")
    finally:
        await session.aclose()
    assert seen == ["Bearer t0k", "Bearer t0k"]
    assert raised.value.errno == errno.EACCES


def test_write_options_are_refused_by_name():
    with pytest.raises(ConfigError, match="writeback_cache: trolleyfs is read-only"):
        split_options("rw,writeback_cache")


def test_uid_and_gid_take_names_or_numbers():
    config = load_config({"source": SOURCE, "uid": "nobody", "gid": "nogroup"}, {})
    assert (config.uid, config.gid) == (65534, 65534)
    assert load_config({"source": SOURCE, "uid": "1234"}, {}).uid == 1234
    with pytest.raises(ConfigError, match="no such user"):
        load_config({"source": SOURCE, "uid": "no-such-user-here"}, {})


def test_a_comma_inside_an_option_value_is_written_backslash_comma():
    from trolleyfs.config import join_mount_options, parse_mount_options

    options = {"token_command": "python -c 'import a, b'", "cache_size": "2G"}
    assert join_mount_options(options) == r"token_command=python -c 'import a\, b',cache_size=2G"
    assert parse_mount_options(join_mount_options(options)) == options
    kept, _ = split_options(r"rw,token_command=get-token --scopes a\,b,noauto")
    assert kept == {"token_command": "get-token --scopes a,b"}
