"""A real Orthanc PACS as a child process, for the integration tests and the benchmarks.

Orthanc 1.10 cannot be told to listen on loopback only; run the tests in a private network
namespace (the test command does: ``unshare -n``) so that it is reachable from this machine alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from trolleyfs.testing.endpoints import DicomWebEndpoints

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def end_process(process: subprocess.Popen | None) -> None:
    """Stop a child server: SIGTERM, and SIGKILL if it has not ended 30 s later."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (apt-get install orthanc)"
    if not DICOMWEB_PLUGIN.exists():
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


class Orthanc(DicomWebEndpoints):
    def __init__(
        self, workdir: Path, aet: str = "ORTHANC", modalities: dict | None = None, extra_config: dict | None = None
    ) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = aet
        self.modalities = modalities or {}
        self.extra_config = extra_config or {}
        if self.extra_config.get("SslEnabled"):
            self.scheme = "https"
        self._process: subprocess.Popen | None = None

    def _write_config(self) -> Path:
        config = {
            "Name": "trolleyfs-test",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": self.modalities,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        config.update(self.extra_config)
        path = self.workdir / "orthanc.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 60.0) -> Orthanc:
        config = self._write_config()
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._process = subprocess.Popen(
            ["Orthanc", str(config)], stdout=log, stderr=log, env={**os.environ, "TCP_NODELAY": "1"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._process.returncode}; see {self.workdir}/orthanc.log")
            try:
                if httpx.get(f"{self.base_url}/system", timeout=1, verify=False).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {timeout}s")

    def stop(self) -> None:
        end_process(self._process)
        self._process = None

    def _client(self) -> httpx.Client:
        users = self.extra_config.get("RegisteredUsers") or {}
        auth = next(iter(users.items()), None)
        return httpx.Client(base_url=self.base_url, timeout=60, auth=auth)

    def upload(self, files: Iterable[bytes]) -> None:
        with self._client() as client:
            for data in files:
                response = client.post("/instances", content=data)
                response.raise_for_status()

    def instances(self) -> list[dict]:
        """Every stored instance: its Orthanc id, UIDs, PatientID, PatientName, AccessionNumber,
        StudyDate and Modality."""
        with self._client() as client:
            result = []
            for orthanc_id in client.get("/instances").json():
                tags = client.get(f"/instances/{orthanc_id}/simplified-tags").json()
                result.append(
                    {
                        "id": orthanc_id,
                        "PatientID": tags.get("PatientID", ""),
                        "PatientName": tags.get("PatientName", ""),
                        "AccessionNumber": tags.get("AccessionNumber", ""),
                        "StudyInstanceUID": tags["StudyInstanceUID"],
                        "SeriesInstanceUID": tags["SeriesInstanceUID"],
                        "SOPInstanceUID": tags["SOPInstanceUID"],
                        "StudyDate": tags.get("StudyDate", ""),
                        "Modality": tags.get("Modality", ""),
                    }
                )
            return result

    def file(self, orthanc_id: str) -> bytes:
        with self._client() as client:
            response = client.get(f"/instances/{orthanc_id}/file")
            response.raise_for_status()
            return response.content
