"""The routes the benchmark times, each a plain function or context manager over a real program.

Direct routes (httpx, curl, getscu, dicomtrolley) write the same files a reader would get; the
filesystems (trolleyfs, rclone) are real kernel mounts read with ``cat``, ``find`` and ``ls -lR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from trolleyfs.testing.orthanc import Orthanc

REPO = Path(__file__).resolve().parent.parent
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
MULTIPART_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cat(files: list[Path]) -> None:
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def list_recursively(directory: Path) -> None:
    subprocess.run(["ls", "-lR", str(directory)], stdout=subprocess.DEVNULL, check=True)


def list_long(directory: Path) -> None:
    subprocess.run(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL, check=True)


def dicom_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.dcm"))


def httpx_download(url: str, target: Path) -> None:
    """One WADO-RS request, the body streamed to a file (what a Python client can do at best)."""
    headers = {"Accept": MULTIPART_ACCEPT, "Accept-Encoding": "identity"}
    with httpx.stream("GET", url, headers=headers, timeout=120) as response, open(target, "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            out.write(chunk)


def curl_download(url: str, target: Path) -> None:
    """The same request with curl: the wire limit on this machine."""
    subprocess.run(
        ["curl", "-sSf", "-H", f"Accept: {MULTIPART_ACCEPT}", "-o", str(target), url], check=True
    )


def getscu(orthanc: Orthanc, calling_aet: str, study_uid: str, series_uid: str, target: Path) -> None:
    """DCMTK's C-GET of one series into a folder (TCP_NODELAY=1, as pacs-notes advise)."""
    subprocess.run(
        [
            "getscu", "-S", "-aet", calling_aet, "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port),
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
            "-k", f"SeriesInstanceUID={series_uid}", "-od", str(target),
        ],
        check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"},
    )


def dicomtrolley(downloader: str, url: str, series_json: Path, target: Path, raw_slash: bool = False) -> float:
    """dicomtrolley 4.1 downloading the series in its own interpreter; the seconds it reports."""
    command = [str(PEERS_PYTHON), str(REPO / "benchmarks" / "peers" / "dicomtrolley_download.py"),
               downloader, url, str(series_json), str(target)]
    done = subprocess.run(command + (["--raw-slash"] if raw_slash else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout)["seconds"]


@contextmanager
def rclone_mount(webdav_url: str, work: Path) -> Iterator[Path]:
    """``rclone mount`` of Orthanc's WebDAV ``by-uids`` tree with ``--vfs-cache-mode full`` on
    ``work/rclone``, its cache and log beside it."""
    mountpoint, cache_dir, log = work / "rclone", work / "rclone-cache", work / "rclone.log"
    mountpoint.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([
        "rclone", "mount", ":webdav:by-uids", str(mountpoint), "--webdav-url", webdav_url,
        "--vfs-cache-mode", "full", "--read-only", "--cache-dir", str(cache_dir),
        "--log-file", str(log), "--log-level", "NOTICE",
    ])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone mount did not come up; see {log}")
            time.sleep(0.05)
        yield mountpoint
    finally:
        unmount(mountpoint, process)


def unmount(mountpoint: Path, process: subprocess.Popen) -> None:
    """Unmount a FUSE mount served by ``process`` and wait for it to end (killed after 30 s)."""
    subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def noop_mount(source: Path, work: Path) -> Iterator[Path]:
    """The no-op pyfuse3 filesystem (benchmarks/noop_fs.py) over ``source`` on ``work/noop``."""
    mountpoint = work / "noop"
    mountpoint.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "noop_fs.py"), str(source), str(mountpoint)],
                               stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout is None or process.stdout.readline().strip() != "ready":
            raise RuntimeError("the no-op pyfuse3 mount did not come up")
        yield mountpoint
    finally:
        unmount(mountpoint, process)


def qido_instances(base_url: str, study_uid: str, series_uid: str) -> None:
    """One raw QIDO-RS instance search of a series: the listing floor."""
    response = httpx.get(f"{base_url}/studies/{study_uid}/series/{series_uid}/instances",
                         headers={"Accept": "application/dicom+json"}, timeout=120)
    response.raise_for_status()


def qido_instances_at_once(base_url: str, study_uid: str, series_uids: list[str]) -> None:
    """The instance searches of all ``series_uids`` sent together: the floor of listing them in parallel."""
    threads = [threading.Thread(target=qido_instances, args=(base_url, study_uid, uid)) for uid in series_uids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def pynetdicom_get(orthanc: Orthanc, calling_aet: str, study_uid: str, series_uid: str) -> None:
    """A bare pynetdicom C-GET of a CT series keeping the bytes in memory and nothing else: the
    floor of any client built on pynetdicom (its DUL reactor handles one PDU per loop turn)."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    received: list[bytes] = []

    def store(event: Event) -> int:
        received.append(event.encoded_dataset(include_meta=True))
        return 0x0000

    association = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet,
                               ext_neg=[build_role(CTImageStorage, scp_role=True)],
                               evt_handlers=[(evt.EVT_C_STORE, store)])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID, identifier.SeriesInstanceUID = study_uid, series_uid
    for _ in association.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
        pass
    association.release()
    if not received:
        raise RuntimeError("the bare pynetdicom C-GET received nothing")
