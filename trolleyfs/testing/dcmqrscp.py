"""DCMTK's ``dcmqrscp`` as a child process: a second, stricter DIMSE Q/R server for the tests.

It answers C-FIND (few attributes per level, strict hierarchy, case-sensitive names, unsorted),
C-GET and C-MOVE (to the destinations of its HostTable only) from the instances ``upload``
stores into it with DCMTK's ``storescu``. Like Orthanc 1.10 it has no listen-address option: run
it in a private network namespace (the test command does).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pydicom

from trolleyfs.testing.orthanc import end_process, free_port

_TOOLS = ("dcmqrscp", "storescu")
_RECORD_KEYWORDS = (
    "PatientID", "PatientName", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "StudyDate", "Modality",
)


def dcmqrscp_missing() -> str | None:
    """Why dcmqrscp cannot run here, or None."""
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed (apt-get install dcmtk)" if missing else None


class Dcmqrscp:
    def __init__(self, workdir: Path, aet: str = "DCMQRSCP", destinations: dict[str, int] | None = None) -> None:
        """``destinations``: C-MOVE destination AE titles and the 127.0.0.1 ports they listen on."""
        self.workdir = workdir
        self.aet = aet
        self.port = free_port()
        self.destinations = destinations or {}
        self.stored: dict[str, bytes] = {}
        """The files uploaded, by SOPInstanceUID: the ground truth of the tests."""
        self._records: dict[str, dict[str, str]] = {}
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"dicom://{self.aet}@127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(f"{aet.lower()} = ({aet}, 127.0.0.1, {port})" for aet, port in self.destinations.items())
        config = self.workdir / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 131072\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.aet} {storage} RW (500, 1024mb) ANY\nAETable END\n"
        )
        return config

    def start(self, timeout: float = 30.0) -> Dcmqrscp:
        """Start (or start again, on the same port and with the same data)."""
        config = self._write_config()
        log = open(self.workdir / "dcmqrscp.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._process = subprocess.Popen(
            ["dcmqrscp", "-c", str(config), "-v"], stdout=log, stderr=log, cwd=self.workdir,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dcmqrscp exited with {self._process.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dcmqrscp did not listen within {timeout}s: {self._log_tail()}")

    def stop(self) -> None:
        end_process(self._process)
        self._process = None

    def upload(self, files: Iterable[bytes]) -> None:
        """Store ``files`` with ``storescu`` (one association for all)."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as folder:
            paths = []
            for index, data in enumerate(files):
                path = Path(folder) / f"{index:06}.dcm"
                path.write_bytes(data)
                paths.append(str(path))
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                uid = str(header.SOPInstanceUID)
                self.stored[uid] = data
                self._records[uid] = {"id": uid, **{keyword: str(header.get(keyword, "")) for keyword in _RECORD_KEYWORDS}}
            done = subprocess.run(
                ["storescu", "-aec", self.aet, "127.0.0.1", str(self.port), *paths],
                capture_output=True, text=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"},
            )
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")

    def instances(self) -> list[dict[str, str]]:
        """Every stored instance, as Orthanc.instances() tells them (its "id" is its SOPInstanceUID)."""
        return list(self._records.values())

    def file(self, instance_id: str) -> bytes:
        """The file stored as ``instance_id``, as it was uploaded."""
        return self.stored[instance_id]

    def _log_tail(self) -> str:
        return (self.workdir / "dcmqrscp.log").read_text(errors="replace")[-2000:]
