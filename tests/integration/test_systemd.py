"""The systemd units verify, and the daemon speaks sd_notify for Type=notify."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_tool

UNITS = Path(__file__).parents[2] / "systemd"


@pytest.mark.parametrize("unit", ["trolleyfs@.service", "mnt-pacs.mount", "mnt-pacs.automount"])
def test_units_pass_systemd_analyze_verify(unit, tmp_path):
    analyze = need_tool("systemd-analyze")
    need_tool("trolleyfs")  # ExecStart= must exist for verify to pass
    name = unit.replace("@.", "@pacs.")
    shutil.copy(UNITS / unit, tmp_path / name)
    result = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert name.split("@")[0] not in result.stderr


def test_the_daemon_notifies_ready_once_mounted_and_stopping_at_the_end(fuse_available, pacs, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "trolleyfs", "mount", pacs.dicomweb_url, str(mountpoint), "-f",
             "-o", f"cache_dir={tmp_path / 'cache'}"],
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        )
        try:
            ready = notify.recv(4096).decode()
            assert ready.startswith("READY=1")
            assert os.path.ismount(mountpoint)
        finally:
            daemon.terminate()
            assert daemon.wait(30) == 0
        assert notify.recv(4096).decode() == "STOPPING=1"
    assert not os.path.ismount(mountpoint)
