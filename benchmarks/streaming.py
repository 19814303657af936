"""Benchmark routes over the embedded PACS: a big file's first megabyte, and a reader's open while
ten series are read ahead. Used by benchmarks/run.py (its "Streaming and contention" table).

- A 512 MiB multi-frame instance (1,024 frames of 512 x 512 x 16 bits), behind a link throttled to
  50 MB/s per connection (benchmarks/throttle.py): curl's time to receive the first 1,000,000
  bytes of its WADO-RS answer, and ``head -c 1000000`` of the file on a fresh trolleyfs mount
  (folder listed beforehand, untimed). The embedded PACS streams as it reads; Orthanc 1.10 would
  build the whole answer first, which hides what is measured.
- Eleven series of 50 instances of 512 x 512: the time to ``cat`` the first file of the eleventh
  on an idle mount, and on another fresh mount just after the first file of each of the ten
  others was opened (starting ten series read-aheads).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from benchmarks import routes
from benchmarks.throttle import Throttle
from tests.mounting import MountFactory
from trolleyfs.testing.data import SampleSpec, generate
from trolleyfs.testing.pacs import EmbeddedPacs

LINK = 50e6
FIRST = 1_000_000
MANY = SampleSpec(patients=(("BENCH-MANY", "BENCH^MANY"),), studies_per_patient=1, series_per_study=11,
                  instances_per_series=50, rows=512, columns=512, seed="trolleyfs-contention")


def multiframe(frames: int = 1024, rows: int = 512, columns: int = 512) -> bytes:
    """One enhanced-CT-sized instance: ``frames`` frames of 16-bit pixels (zeros: size is what counts)."""
    template = next(generate(SampleSpec(patients=(("BENCH-BIG", "BENCH^BIG"),), studies_per_patient=1,
                                        series_per_study=1, instances_per_series=1, seed="trolleyfs-big")))
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(template))
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = rows, columns, frames
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.SamplesPerPixel, dataset.PixelRepresentation = 1, 0
    dataset.PixelData = bytes(rows * columns * 2 * frames)
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta = FileMetaDataset(dataset.file_meta)
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = pydicom.filebase.DicomBytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def first_megabyte_with_curl(url: str) -> float:
    started = time.perf_counter()
    curl = subprocess.Popen(["curl", "-sS", "-H", f"Accept: {routes.MULTIPART_ACCEPT}", url], stdout=subprocess.PIPE)
    assert curl.stdout is not None
    got = 0
    while got < FIRST:
        chunk = curl.stdout.read1(FIRST - got)
        if not chunk:
            break
        got += len(chunk)
    elapsed = time.perf_counter() - started
    curl.kill()
    curl.wait()
    return elapsed


def head(path: Path) -> None:
    subprocess.run(["head", "-c", str(FIRST), str(path)], stdout=subprocess.DEVNULL, check=True)


def big_file_rounds(work: Path, rounds: int, record) -> None:  # noqa: ANN001
    with EmbeddedPacs([multiframe()]) as pacs, Throttle(("127.0.0.1", pacs.http_port), LINK) as link:
        [instance] = pacs.instances.values()
        base = f"http://127.0.0.1:{link.port}/dicom-web"
        url = (f"{base}/studies/{instance.value('StudyInstanceUID')}/series/{instance.value('SeriesInstanceUID')}"
               f"/instances/{instance.value('SOPInstanceUID')}")
        for number in range(rounds):
            record("curl: first 1 MB of a 512 MiB instance at 50 MB/s", first_megabyte_with_curl(url))
            (work / f"big-{number}").mkdir()
            mounts = MountFactory(work / f"big-{number}")
            try:
                mounted = mounts(base, log_level="WARNING", readahead_max=0)
                [path] = mounted.files()
                record("trolleyfs: head -c 1000000 of it, cold", routes.timed(lambda: head(path)))
            finally:
                mounts.unmount_all()


def contention_rounds(work: Path, rounds: int, record) -> None:  # noqa: ANN001
    with EmbeddedPacs(generate(MANY)) as pacs:
        for number in range(rounds):
            for busy in (False, True):
                (work / f"busy-{number}-{busy}").mkdir()
                mounts = MountFactory(work / f"busy-{number}-{busy}")
                try:
                    mounted = mounts(pacs.dicomweb_url, log_level="WARNING")
                    series = sorted({path.parent for path in mounted.files()})
                    if busy:
                        for other in series[:-1]:  # ten read-aheads start (two run, eight queue)
                            with open(sorted(other.iterdir())[0], "rb") as first:
                                first.read(1)
                    target = sorted(series[-1].iterdir())[0]
                    route = "trolleyfs: open+cat of a cold file during 10 read-aheads" if busy else \
                        "trolleyfs: open+cat of a cold file, idle mount"
                    record(route, routes.timed(lambda: routes.cat([target])))
                finally:
                    mounts.unmount_all()
