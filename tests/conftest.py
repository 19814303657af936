"""Shared fixtures: the real PACSs (Orthanc, DCMTK's dcmqrscp), the embedded PACS, and real kernel
mounts of trolleyfs.

Under CI=true a test whose real part (FUSE, Orthanc, a DICOM tool) is missing fails instead of
skipping: a green run must mean the real tests ran.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from trolleyfs.testing.data import SAMPLE_PATIENTS, SampleSpec, generate
from trolleyfs.testing.dcmqrscp import Dcmqrscp, dcmqrscp_missing
from trolleyfs.testing.orthanc import Orthanc, free_port, orthanc_missing
from trolleyfs.testing.pacs import EmbeddedPacs
from tests.mounting import MountFactory

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ODD_PATIENT = ("ODD/ID 7", "ODD^ZED")
ORTHANC_SPEC = SampleSpec(patients=(*SAMPLE_PATIENTS[:2], ODD_PATIENT))
BIG_SERIES_SPEC = SampleSpec(
    patients=(("BIG-001", "BIG^SERIES"),), studies_per_patient=1, series_per_study=1,
    instances_per_series=120, rows=32, columns=32, seed="trolleyfs-big-series",
)
MOVE_AET = "TROLLEY"


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where the test command must have installed everything."""
    if IN_CI:
        pytest.fail(f"required for this test but missing: {reason}")
    pytest.skip(reason)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    return path


@pytest.fixture(scope="session")
def fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing")
    need_tool("fusermount3")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    if reason := orthanc_missing():
        unavailable(reason)
    move_port = free_port()
    server = Orthanc(
        tmp_path_factory.mktemp("orthanc"),
        modalities={MOVE_AET: {"AET": MOVE_AET, "Host": "127.0.0.1", "Port": move_port}},
    )
    server.move_port = move_port
    server.start()
    server.upload(generate(ORTHANC_SPEC))
    server.upload(generate(BIG_SERIES_SPEC))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory):
    """DCMTK's stricter Q/R SCP, holding the same sample data as Orthanc but the big series."""
    if reason := dcmqrscp_missing():
        unavailable(reason)
    server = Dcmqrscp(tmp_path_factory.mktemp("dcmqrscp"), destinations={MOVE_AET: free_port()})
    server.move_port = server.destinations[MOVE_AET]
    server.start()
    server.upload(generate(ORTHANC_SPEC))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_instances(orthanc: Orthanc) -> list[dict]:
    return orthanc.instances()


@pytest.fixture(scope="session")
def orthanc_patients(orthanc_instances: list[dict]) -> int:
    return len({i["PatientID"] for i in orthanc_instances})


@pytest.fixture(scope="session")
def sample_files() -> list[bytes]:
    return list(generate(SampleSpec()))


@pytest.fixture
def pacs(sample_files: list[bytes]):
    with EmbeddedPacs(sample_files) as server:
        yield server


@pytest.fixture
def mount(fuse_available: None, tmp_path: Path):
    factory = MountFactory(tmp_path)
    yield factory
    factory.unmount_all()


@dataclass(frozen=True)
class Backend:
    """One searcher + downloader combination of one real server, as mount options."""

    name: str
    source: str
    options: dict
    exact_bytes: bool
    """DICOMweb returns the stored file itself. Over DIMSE, the server sends the dataset (Orthanc
    re-encoded by DCMTK: trailing elements differ) and we wrap it in our own file meta, so
    identity and pixel data are compared instead."""
    per_instance: bool = False
    """Its downloader fetches one instance per request (WADO-URI)."""
    server: object = None
    """The server (Orthanc or Dcmqrscp): ``instances()``, ``file(id)``, ``stop()``, ``start()``."""


def backends_for(orthanc: Orthanc) -> dict[str, Backend]:
    web, dimse = orthanc.dicomweb_url, f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    calling = {"calling_aet": MOVE_AET}
    move = {**calling, "downloader": "c-move", "move_port": orthanc.move_port}
    return {
        "qido+wado-rs": Backend("qido+wado-rs", web, {}, True, server=orthanc),
        "qido+wado-uri": Backend("qido+wado-uri", web, {"downloader": "wado-uri", "wado_uri_url": orthanc.wado_uri_url},
                                 True, True, server=orthanc),
        "cfind+cget": Backend("cfind+cget", dimse, calling, False, server=orthanc),
        "cfind+cget-dcmtk": Backend("cfind+cget-dcmtk", dimse, {**calling, "downloader": "c-get-dcmtk"}, False,
                                    server=orthanc),
        "cfind+cmove": Backend("cfind+cmove", dimse, move, False, server=orthanc),
        "qido+cget": Backend("qido+cget", web, {**calling, "downloader": "c-get", "qr_url": dimse}, False, server=orthanc),
        "cfind+wado-rs": Backend("cfind+wado-rs", dimse, {**calling, "downloader": "wado-rs", "wado_rs_url": web}, True,
                                 server=orthanc),
    }


def dcmqrscp_backends(dcmqrscp: Dcmqrscp) -> dict[str, Backend]:
    calling = {"calling_aet": MOVE_AET}
    move = {**calling, "downloader": "c-move", "move_port": dcmqrscp.move_port}
    return {
        "dcmqrscp:cfind+cget": Backend("dcmqrscp:cfind+cget", dcmqrscp.url, calling, False, server=dcmqrscp),
        "dcmqrscp:cfind+cget-dcmtk": Backend("dcmqrscp:cfind+cget-dcmtk", dcmqrscp.url,
                                             {**calling, "downloader": "c-get-dcmtk"}, False, server=dcmqrscp),
        "dcmqrscp:cfind+cmove": Backend("dcmqrscp:cfind+cmove", dcmqrscp.url, move, False, server=dcmqrscp),
    }


BACKEND_NAMES = ["qido+wado-rs", "qido+wado-uri", "cfind+cget", "cfind+cmove", "qido+cget", "cfind+wado-rs"]
REAL_PACS_BACKENDS = [*BACKEND_NAMES, "cfind+cget-dcmtk", "dcmqrscp:cfind+cget", "dcmqrscp:cfind+cmove",
                      "dcmqrscp:cfind+cget-dcmtk"]


@pytest.fixture(params=REAL_PACS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every combination over Orthanc, and the DIMSE ones over dcmqrscp too."""
    if request.param.startswith("dcmqrscp:"):
        return dcmqrscp_backends(request.getfixturevalue("dcmqrscp"))[request.param]
    return backends_for(request.getfixturevalue("orthanc"))[request.param]


@pytest.fixture
def stored_instances(backend: Backend, request: pytest.FixtureRequest) -> list[dict]:
    """What the backend's server holds (see Orthanc.instances)."""
    if isinstance(backend.server, Orthanc):
        return request.getfixturevalue("orthanc_instances")
    return backend.server.instances()
