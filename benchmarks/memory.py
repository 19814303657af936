"""Benchmark: the daemon's resident memory while browsing 100,000 instances.

An embedded PACS (in this process) holds ``--instances`` tiny instances, 1,000 to a series, ten
series to a study, all of one patient. A trolleyfs mount (its own process, default options) is
walked like ``find -ls`` does (every directory listed, every file stat'ed), study by study, and the
daemon's VmRSS is read after each study. Then the kernel is made to forget what it holds
(``echo 2 > /proc/sys/vm/drop_caches``, which sends FUSE FORGETs), and the walk is repeated: the
memory a second walk needs should be the memory the first one needed, not twice it.

Prints a table (RSS and inode-table size per step) and writes JSON. Run:
``benchmarks/run.sh --memory`` or ``.venv/bin/python benchmarks/memory.py`` after setup.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.mounting import MountFactory  # noqa: E402
from trolleyfs.testing.pacs import EmbeddedPacs  # noqa: E402

PER_SERIES = 1000
SERIES_PER_STUDY = 10
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def tiny_instances(count: int) -> list[tuple[bytes, Dataset]]:
    """Minimal Part-10 CT files (4x4 pixels) with their headers, made fast enough for 100,000."""
    made = []
    for number in range(count):
        study, series = number // (PER_SERIES * SERIES_PER_STUDY), number // PER_SERIES
        ds = Dataset()
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality = "MEM-001", "MEMORY^BENCH", "20240115", "CT"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.9.{study + 1}"
        ds.SeriesInstanceUID = f"{ds.StudyInstanceUID}.{series + 1}"
        ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.{number + 1}"
        ds.SOPClassUID = CT_IMAGE
        ds.SeriesNumber, ds.InstanceNumber = series + 1, number % PER_SERIES + 1
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated, ds.SamplesPerPixel = 16, 1
        ds.PixelData = bytes(32)
        ds["PixelData"].VR = "OW"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CT_IMAGE, ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        made.append((buffer.getvalue(), ds))
    return made


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def walk(study: Path) -> int:
    files = 0
    for directory, _, names in os.walk(study):
        for name in names:
            os.stat(os.path.join(directory, name))
            files += 1
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/memory.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    pacs = EmbeddedPacs()
    for data, header in tiny_instances(args.instances):
        pacs.add(data, header)
    print(f"{args.instances} instances generated in {time.perf_counter() - started:.0f} s")
    rows: list[dict] = []
    with pacs, tempfile.TemporaryDirectory(prefix="trolleyfs-memory-") as tmp:
        mounts = MountFactory(Path(tmp))
        try:
            mounted = mounts(pacs.dicomweb_url, log_level="WARNING")
            pid = mounted.process.pid

            def record(step: str, files: int) -> None:
                stats = mounted.stats()
                rows.append({"step": step, "files_walked": files, "rss_mib": round(rss_mib(pid), 1),
                             "inodes": stats["inodes"], "searches": stats["searches"]})
                print(f"| {step:<28} | {files:>8} | {rows[-1]['rss_mib']:>8} | {stats['inodes']:>8} |"
                      f" {stats['searches']:>8} |")

            print(f"| {'step':<28} | {'files':>8} | {'RSS MiB':>8} | {'inodes':>8} | {'searches':>8} |")
            print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
            record("mounted", 0)
            patient = next(mounted.patients.iterdir())
            for round_name in ("first walk", "second walk"):
                walked = 0
                for study in sorted(patient.iterdir()):
                    walked += walk(study)
                    if walked % 20_000 == 0 or walked == args.instances:
                        record(f"{round_name}", walked)
                Path("/proc/sys/vm/drop_caches").write_text("2\n")
                inodes = mounted.stats()["inodes"]
                deadline = time.monotonic() + 30
                while mounted.stats()["inodes"] >= inodes and time.monotonic() < deadline:
                    time.sleep(0.2)  # FORGETs reach the daemon asynchronously: no event to wait on
                record(f"{round_name}: kernel forgot", walked)
        finally:
            mounts.unmount_all()
    args.json.write_text(json.dumps({"instances": args.instances, "rows": rows}, indent=2))
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
