"""The command-line contract: exit statuses and messages that scripts, fstab and systemd rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest


def trolleyfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trolleyfs", *args], capture_output=True, text=True, timeout=timeout)


def test_a_bad_option_exits_2_naming_it(tmp_path):
    result = trolleyfs("mount", "http://127.0.0.1:9/dicom-web", str(tmp_path), "-o", "cache_sise=2G")
    assert result.returncode == 2
    assert "cache_sise" in result.stderr


def test_a_bad_source_exits_2(tmp_path):
    result = trolleyfs("mount", "ftp://127.0.0.1/x", str(tmp_path))
    assert result.returncode == 2
    assert "http" in result.stderr


@pytest.mark.parametrize("command", ["trolleyfs", "mount.trolleyfs"])
@pytest.mark.parametrize("option", ["", "qr_url=dicom://PACS:hunter2@127.0.0.1:104", "wado_uri_url=http://me:hunter2@127.0.0.1/wado"])
def test_credentials_in_a_url_exit_2_with_one_line_naming_credentials_file(tmp_path, command, option):
    """Security: a password in a URL would reach /proc/mounts, the log and every redirect target."""
    source = "http://127.0.0.1:9/dicom-web" if option else "https://me:hunter2@127.0.0.1:9/dicom-web"
    options = ["-o", option] if option else []
    if command == "trolleyfs":
        result = trolleyfs("mount", source, str(tmp_path), *options)
    else:
        result = subprocess.run([sys.executable, "-m", "trolleyfs.mount_helper", source, str(tmp_path), *options],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "credentials_file" in lines[0]
    assert "hunter2" not in result.stderr
    assert not (tmp_path / "cache").exists()


def test_a_missing_mountpoint_exits_1_with_the_reason(tmp_path, fuse_available):
    result = trolleyfs("mount", "http://127.0.0.1:9/dicom-web", str(tmp_path / "absent"),
                       "-o", f"cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 1
    assert "not a directory" in result.stderr


def test_the_demo_mounts_its_embedded_pacs_over_mint_and_rad69_too(tmp_path, fuse_available):
    import json
    import os
    import select
    import signal

    from trolleyfs.daemon import READY, READY_FD_ENV

    read_end, write_end = os.pipe()
    demo = subprocess.Popen(
        [sys.executable, "-m", "trolleyfs", "demo", str(tmp_path / "mnt"), "-o", "searcher=mint,downloader=rad69"],
        env={**os.environ, READY_FD_ENV: str(write_end)}, pass_fds=(write_end,),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as ready:
            assert select.select([ready], [], [], 120)[0] and ready.read() == READY
        files = sorted((tmp_path / "mnt" / "patients").rglob("*.dcm"))
        assert files and files[0].read_bytes()[128:132] == b"DICM"
        stats = json.loads((tmp_path / "mnt" / ".trolleyfs" / "stats").read_text())
        assert (stats["searcher"], stats["downloader"], stats["instances_downloaded"] > 0) == ("mint", "rad69", True)
    finally:
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
    assert demo.returncode == 0, output
    assert "MINT and RAD-69" in output
