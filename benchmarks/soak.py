"""Soak: a real mount of the embedded PACS read a million times, and what it costs over time.

Four reader threads read whole files: most from a hot set of 40 that stays cached (re-reads), the
rest (``--cold`` of them, 2%) from all 300, which do not fit the 1 MiB cache: new files, and files
evicted and fetched again (series read-ahead is off by default, ``--readahead-max`` turns it on:
with a cache this small it evicts the hot set over and over, which measures thrashing instead). They list series folders now and then, while the PACS is made to
fail a request every few thousand reads (503 or 429 once, or a kept-alive connection dropped): a
mount must absorb those, so any error is unexpected. Every byte read is checked against the PACS.
The daemon's RSS is sampled every ``--sample`` reads. Run: ``benchmarks/run.sh --soak`` (``--reads
N``, default 1,000,000; ``--seconds S`` bounds it, default 3,600). CI runs a short version
(tests/integration/test_soak_short.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.mounting import MountFactory  # noqa: E402
from trolleyfs.testing.data import SampleSpec, generate  # noqa: E402
from trolleyfs.testing.pacs import EmbeddedPacs  # noqa: E402

SPEC = SampleSpec(patients=(("SOAK-1", "SOAK^ONE"), ("SOAK-2", "SOAK^TWO")), studies_per_patient=2,
                  series_per_study=3, instances_per_series=25, seed="trolleyfs-soak")
"""300 instances of ~10 KB: 3 MB, against a cache of 1 MB."""
FAULTS = (("wado-rs", "status", 503), ("wado-rs", "status", 429), ("qido", "status", 503))


@dataclass
class Report:
    reads: int = 0
    listings: int = 0
    wrong_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    faults_injected: int = 0
    seconds: float = 0.0
    rss_kib: list[tuple[int, int]] = field(default_factory=list)
    """(reads so far, daemon RSS in KiB)."""
    stats: dict = field(default_factory=dict)

    def rss_growth(self, after: int = 100_000) -> float | None:
        """RSS at the end over RSS once ``after`` reads were done (or the first sample)."""
        if not self.rss_kib:
            return None
        base = next((rss for reads, rss in self.rss_kib if reads >= after), self.rss_kib[0][1])
        return self.rss_kib[-1][1] / base


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(reads: int, seconds: float, work: Path, sample: int = 10_000, threads: int = 4,
         fault_every: int = 5_000, cache_size: str = "1M", cold: float = 0.02, readahead_max: str = "0") -> Report:
    report = Report()
    with EmbeddedPacs(generate(SPEC)) as pacs:
        digests = {uid: hashlib.sha256(instance.data).digest() for uid, instance in pacs.instances.items()}
        mounts = MountFactory(work)
        try:
            mounted = mounts(pacs.dicomweb_url, log_level="WARNING", cache_size=cache_size, retries=3,
                             listing_ttl=5, readahead_max=readahead_max)
            files = mounted.files()
            hot = random.Random(0).sample(files, 40)
            series_dirs = sorted({path.parent for path in files})
            lock = threading.Lock()
            deadline = time.monotonic() + seconds
            started = time.monotonic()

            def reader(seed: int) -> None:
                chooser = random.Random(seed)
                while True:
                    with lock:
                        if report.reads >= reads or time.monotonic() > deadline:
                            return
                        report.reads += 1
                        count = report.reads
                        if count % fault_every == 0:
                            kind, action, status = chooser.choice(FAULTS)
                            pacs.faults.add(kind, action, status=status, count=1)
                            report.faults_injected += 1
                        if count % sample == 0:
                            report.rss_kib.append((count, rss_kib(mounted.process.pid)))
                    try:
                        if chooser.random() < 0.01:
                            os.listdir(chooser.choice(series_dirs))
                            with lock:
                                report.listings += 1
                        path = chooser.choice(files if chooser.random() < cold else hot)
                        data = path.read_bytes()
                        if hashlib.sha256(data).digest() != digests[path.name[:-4].rsplit("_", 1)[1]]:
                            with lock:
                                report.wrong_bytes += 1
                    except OSError as exc:
                        with lock:
                            report.errors.append(f"{type(exc).__name__}: {exc}")

            workers = [threading.Thread(target=reader, args=(n,)) for n in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            report.seconds = time.monotonic() - started
            report.rss_kib.append((report.reads, rss_kib(mounted.process.pid)))
            report.stats = mounted.stats()
        finally:
            mounts.unmount_all()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--sample", type=int, default=50_000)
    parser.add_argument("--cold", type=float, default=0.02, help="share of reads picked among all files")
    parser.add_argument("--readahead-max", default="0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trolleyfs-soak-") as tmp:
        report = soak(args.reads, args.seconds, Path(tmp), sample=args.sample, cold=args.cold,
                      readahead_max=args.readahead_max)
    stats = report.stats
    print(f"\nSoak: {report.reads:,} reads in {report.seconds:.0f} s ({report.reads / report.seconds:,.0f} reads/s), "
          f"{report.listings:,} listings, {report.faults_injected} faults injected\n")
    print("| reads | daemon RSS (MiB) |")
    print("|---|---|")
    for count, rss in report.rss_kib:
        print(f"| {count:,} | {rss / 1024:.1f} |")
    growth = report.rss_growth()
    print(f"\n- wrong bytes: {report.wrong_bytes}; unexpected errors: {len(report.errors)}"
          f"{' (first: ' + report.errors[0] + ')' if report.errors else ''}")
    print(f"- RSS at the end / after 100,000 reads: {growth:.3f}" if growth else "- RSS: not sampled")
    print(f"- downloads: {stats.get('instances_downloaded')} instances in {stats.get('download_requests')} requests, "
          f"cache hits {stats.get('cache_hits')}, read-aheads {stats.get('read_aheads')}, "
          f"skipped {stats.get('instances_skipped')}")
    met = report.reads >= 1_000_000 and not report.wrong_bytes and not report.errors and growth is not None and growth <= 1.1
    print(f"- acceptance (>= 1,000,000 reads, 0 wrong, 0 errors, RSS within 10%): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
