"""Benchmark: the HTTP protocol pairs against the embedded PACS, which alone speaks all of them.

One 200-slice 512x512 CT series in the embedded PACS (this process); for each searcher+downloader
pair a fresh mount (its own process, empty cache) is timed for ``find`` (listing only), a cold
``cat`` of every file and a warm one, with the request counts. Orthanc has no MINT or RAD-69, so
this is where those two are compared with QIDO-RS/WADO-RS on equal terms. Run:
``benchmarks/run.sh --protocols`` (``--rounds N``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import routes  # noqa: E402
from benchmarks.run import SERIES  # noqa: E402
from tests.mounting import MountFactory  # noqa: E402
from trolleyfs.testing.data import generate  # noqa: E402
from trolleyfs.testing.pacs import EmbeddedPacs  # noqa: E402


def pairs(pacs: EmbeddedPacs) -> dict[str, tuple[str, dict[str, str]]]:
    return {
        "qido-rs + wado-rs": (pacs.dicomweb_url, {}),
        "qido-rs + wado-uri": (pacs.dicomweb_url, {"downloader": "wado-uri", "wado_uri_url": pacs.wado_uri_url}),
        "mint + rad69": (f"{pacs.base_url}/mint", {"searcher": "mint", "downloader": "rad69",
                                                   "rad69_url": f"{pacs.base_url}/rad69"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[float]] = {}
    requests: dict[str, dict[str, int]] = {}
    with EmbeddedPacs(generate(SERIES)) as pacs, tempfile.TemporaryDirectory(prefix="trolleyfs-protocols-") as tmp:
        size = sum(len(instance.data) for instance in pacs.instances.values())
        for round_number in range(args.rounds):
            for name, (source, options) in pairs(pacs).items():
                work = Path(tmp) / f"{round_number}-{name.replace(' ', '')}"
                work.mkdir()
                mounts = MountFactory(work)
                before = dict(pacs.counts)
                try:
                    mounted = mounts(source, log_level="WARNING", **options)
                    files: list[Path] = []
                    timings = {
                        "find": routes.timed(lambda: files.extend(routes.dicom_files(mounted.patients))),
                        "cold cat": routes.timed(lambda: routes.cat(files)),
                        "warm cat": routes.timed(lambda: routes.cat(files)),
                    }
                finally:
                    mounts.unmount_all()
                for step, seconds in timings.items():
                    samples.setdefault((name, step), []).append(seconds)
                requests[name] = {kind: count - before.get(kind, 0) for kind, count in pacs.counts.items()
                                  if count > before.get(kind, 0)}
    print(f"\nEmbedded PACS, 200 x 512x512 CT ({size / 1e6:.0f} MB), {args.rounds} rounds, medians\n")
    print(f"| {'pair':<20} | {'find s':>7} | {'cold s':>7} | {'warm s':>7} | {'cold MB/s':>9} | requests (last round) |")
    print(f"|{'-' * 22}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 23}|")
    for name in pairs(pacs):
        find, cold, warm = (statistics.median(samples[(name, step)]) for step in ("find", "cold cat", "warm cat"))
        counts = ", ".join(f"{kind} {count}" for kind, count in sorted(requests[name].items()))
        print(f"| {name:<20} | {find:7.3f} | {cold:7.3f} | {warm:7.3f} | {size / 1e6 / cold:9.0f} | {counts} |")


if __name__ == "__main__":
    main()
