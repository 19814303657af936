"""The command-line contract: exit statuses and messages that scripts, fstab and systemd rely on."""

from __future__ import annotations

import subprocess
import sys


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


def test_a_missing_mountpoint_exits_1_with_the_reason(tmp_path, fuse_available):
    result = trolleyfs("mount", "http://127.0.0.1:9/dicom-web", str(tmp_path / "absent"),
                       "-o", f"cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 1
    assert "not a directory" in result.stderr
