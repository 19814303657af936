"""Benchmark: reading a 200-slice 512x512 CT series through trolleyfs versus the direct route.

Starts a real Orthanc with the series, then, in the same run and for several rounds:

- direct:   one WADO-RS series request with httpx, body streamed to a file (the floor);
- list:     ``find`` over the mount (searches only, no instance bytes);
- cold cat: ``cat`` of every file of the series through a fresh mount with an empty cache;
- warm cat: the same again on the same mount (kernel page cache and disk cache warm);
- restart:  ``cat`` after remounting on the same cache (disk cache only);
- getscu:   DCMTK's C-GET of the series to a folder (with TCP_NODELAY=1), the DIMSE reference;
- local:    ``cat`` of the same files from a local directory (page cache warm), the floor for
            warm reads;

for the downloaders wado-rs, wado-uri, c-get and c-move. Prints medians and each route's ratio to
the direct WADO-RS route and to getscu. Run: ``benchmarks/run.sh``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.mounting import MountFactory  # noqa: E402
from trolleyfs.testing.data import SampleSpec, generate  # noqa: E402
from trolleyfs.testing.orthanc import Orthanc, free_port  # noqa: E402

MOVE_AET = "BENCH"

SERIES = SampleSpec(
    patients=(("BENCH-001", "BENCH^SERIES"),), studies_per_patient=1, series_per_study=1,
    instances_per_series=200, rows=512, columns=512, seed="trolleyfs-benchmark",
)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cat(files: list[Path]) -> None:
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def direct_download(url: str, target: Path) -> None:
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
              "Accept-Encoding": "identity"}
    with httpx.stream("GET", url, headers=accept, timeout=60) as response, open(target, "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            out.write(chunk)


def getscu(orthanc: Orthanc, instance: dict, target: Path) -> None:
    subprocess.run(
        [
            "getscu", "-S", "-aet", MOVE_AET, "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port),
            "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={instance['StudyInstanceUID']}",
            "-k", f"SeriesInstanceUID={instance['SeriesInstanceUID']}",
            "-od", str(target),
        ],
        check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trolleyfs-bench-") as tmp:
        work = Path(tmp)
        move_port = free_port()
        orthanc = Orthanc(
            work / "orthanc", modalities={MOVE_AET: {"AET": MOVE_AET, "Host": "127.0.0.1", "Port": move_port}}
        ).start()
        orthanc.move_port = move_port
        try:
            run(orthanc, work, args.rounds)
        finally:
            orthanc.stop()


def run(orthanc: Orthanc, work: Path, rounds: int) -> None:
    orthanc.upload(generate(SERIES))
    instance = orthanc.instances()[0]
    series_url = (f"{orthanc.dicomweb_url}/studies/{instance['StudyInstanceUID']}"
                  f"/series/{instance['SeriesInstanceUID']}")
    direct_download(series_url, work / "warmup")  # Orthanc's own caches warm for every route alike
    size = (work / "warmup").stat().st_size
    results: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        results.setdefault(name, []).append(seconds)

    web, dimse = orthanc.dicomweb_url, f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    downloaders = {
        "wado-rs": (web, {}),
        "wado-uri": (web, {"downloader": "wado-uri", "wado_uri_url": orthanc.wado_uri_url}),
        "c-get": (dimse, {"calling_aet": MOVE_AET}),
        "c-move": (dimse, {"calling_aet": MOVE_AET, "downloader": "c-move", "move_port": orthanc.move_port}),
    }
    for round_number in range(rounds):
        record("direct WADO-RS series (httpx)", timed(lambda: direct_download(series_url, work / "direct")))
        getscu_dir = work / f"getscu-{round_number}"
        getscu_dir.mkdir()
        record("getscu series (DCMTK, TCP_NODELAY=1)", timed(lambda: getscu(orthanc, instance, getscu_dir)))
        local_files = sorted(getscu_dir.iterdir())
        assert len(local_files) == SERIES.instances_per_series
        cat(local_files)  # into the page cache
        record("local disk: warm cat, all files", timed(lambda: cat(local_files)))
        for name, (source, options) in downloaders.items():
            mounts = MountFactory(work / f"{name}-{round_number}")
            (mounts.tmp_path).mkdir()
            try:
                mounted = mounts(source, log_level="WARNING", **options)
                files: list[Path] = []
                record(f"{name}: list (find, no bytes)", timed(lambda: files.extend(mounted.files())))
                assert len(files) == SERIES.instances_per_series
                record(f"{name}: cold cat, all files", timed(lambda: cat(files)))
                record(f"{name}: warm cat, same mount", timed(lambda: cat(files)))
                mounted.unmount()
                remounted = mounts(source, log_level="WARNING", **options)
                files = remounted.files()
                record(f"{name}: cat after restart (disk cache)", timed(lambda: cat(files)))
            finally:
                mounts.unmount_all()
    direct = statistics.median(results["direct WADO-RS series (httpx)"])
    dcmtk = statistics.median(results["getscu series (DCMTK, TCP_NODELAY=1)"])
    local = statistics.median(results["local disk: warm cat, all files"])
    print(f"\n200 x 512x512 CT series, {size / 1e6:.0f} MB, {rounds} rounds, medians\n")
    print(f"| {'route':<42} | {'seconds':>8} | {'MB/s':>7} | {'x direct':>8} | {'x getscu':>8} | {'x local':>8} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(
            f"| {name:<42} | {median:8.3f} | {size / 1e6 / median:7.0f} | {median / direct:8.2f} |"
            f" {median / dcmtk:8.2f} | {median / local:8.2f} |"
        )


if __name__ == "__main__":
    main()
