"""``trolleyfs mount`` without ``-f`` (and so mount(8) and fstab) waits a bounded time for its
daemon: a daemon that never reports ready is stopped and the mount fails, instead of a boot that
hangs forever."""

from __future__ import annotations

import os
import sys
import time

import pytest

from trolleyfs.daemon import mount_in_background
from trolleyfs.errors import TrolleyError


def test_a_daemon_that_never_reports_ready_is_stopped_after_start_timeout(tmp_path):
    pid_file = tmp_path / "pid"
    hanging_daemon = [sys.executable, "-c",
                      f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"]
    started = time.monotonic()
    with pytest.raises(TrolleyError, match="start_timeout"):
        mount_in_background(hanging_daemon, tmp_path / "log", tmp_path / "mnt", timeout=2)
    assert time.monotonic() - started < 15
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_daemon_that_fails_reports_why(tmp_path):
    failing_daemon = [sys.executable, "-c", "import os; os.write(int(os.environ['TROLLEYFS_READY_FD']), b'no way\\n')"]
    with pytest.raises(TrolleyError, match="no way"):
        mount_in_background(failing_daemon, tmp_path / "log", tmp_path / "mnt", timeout=30)
