"""Real kernel mounts of trolleyfs for tests: each daemon runs in its own process.

A process that reads through a mount it serves itself would deadlock, so the test process only
reads, and ``python -m trolleyfs mount ... -f`` serves.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trolleyfs.config import join_mount_options
from trolleyfs.daemon import READY, READY_FD_ENV


class Mounted:
    def __init__(self, path: Path, process: subprocess.Popen, log: Path) -> None:
        self.path = path
        self.process = process
        self.log = log

    @property
    def patients(self) -> Path:
        return self.path / "patients"

    def stats(self) -> dict:
        return json.loads((self.path / ".trolleyfs" / "stats").read_text())

    def files(self) -> list[Path]:
        return sorted(self.patients.rglob("*.dcm"))

    def unmount(self, timeout: float = 30) -> int:
        """``fusermount3 -u``, then the daemon's exit status."""
        if self.process.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False, capture_output=True)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False, capture_output=True)
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class MountFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounts: list[Mounted] = []
        self.cache_dir = tmp_path / "cache"

    def __call__(self, source: str, ready_timeout: float = 30, **options: object) -> Mounted:
        """Mount ``source`` in a new daemon process and wait until the mount answers."""
        index = len(self.mounts)
        path = self.tmp_path / f"mnt{index}"
        path.mkdir()
        log = self.tmp_path / f"daemon{index}.log"
        options = {"cache_dir": self.cache_dir, "log_level": "DEBUG", **options}
        option_text = join_mount_options(options)
        read_end, write_end = os.pipe()
        with open(log, "ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "trolleyfs", "mount", source, str(path), "-f", "-o", option_text],
                stdout=output,
                stderr=output,
                env={**os.environ, READY_FD_ENV: str(write_end)},
                pass_fds=(write_end,),
            )
        os.close(write_end)
        mounted = Mounted(path, process, log)
        self.mounts.append(mounted)
        with os.fdopen(read_end, "rb") as ready:
            answered, _, _ = select.select([ready], [], [], ready_timeout)
            answer = ready.read() if answered else b""
        if answer != READY or not os.path.ismount(path):
            raise RuntimeError(f"mount not ready ({answer!r}):\n{mounted.log_text()}")
        return mounted

    def unmount_all(self) -> None:
        for mounted in self.mounts:
            mounted.unmount()


def expect_eio_while_the_pacs_is_down(mounted: Mounted, stop: Callable[[], object], start: Callable[[], object]) -> None:
    """With the PACS stopped, reading a file not cached yet and listing (mount with listing_ttl=0)
    give EIO within 15 s and the mount stays; once the PACS is back, the file reads."""
    files = mounted.files()
    stop()
    try:
        for attempt in (lambda: files[0].read_bytes(), lambda: list(mounted.patients.iterdir())):
            started = time.monotonic()
            try:
                attempt()
            except OSError as exc:
                assert exc.errno == errno.EIO, exc
            else:
                raise AssertionError("no error while the PACS is down")
            assert time.monotonic() - started < 15
        assert os.path.ismount(mounted.path)
    finally:
        start()
    assert files[0].read_bytes()[128:132] == b"DICM"
