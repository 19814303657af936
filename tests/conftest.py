"""Shared fixtures: the real Orthanc, the embedded PACS, and real kernel mounts of trolleyfs.

Under CI=true a test whose real part (FUSE, Orthanc, a DICOM tool) is missing fails instead of
skipping: a green run must mean the real tests ran.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trolleyfs.testing.data import SAMPLE_PATIENTS, SampleSpec, generate
from trolleyfs.testing.orthanc import Orthanc, orthanc_missing
from trolleyfs.testing.pacs import EmbeddedPacs
from tests.mounting import MountFactory

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ODD_PATIENT = ("ODD/ID 7", "ODD^ZED")
ORTHANC_SPEC = SampleSpec(patients=(*SAMPLE_PATIENTS[:2], ODD_PATIENT))


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
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    server.upload(generate(ORTHANC_SPEC))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_instances(orthanc: Orthanc) -> list[dict]:
    return orthanc.instances()


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
