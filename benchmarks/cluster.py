"""Benchmark: daemons sharing one cache directory (``cache_mode=shared``) against one daemon alone.

One 200-slice 512x512 CT series in the embedded PACS (this process), which counts its WADO-RS
requests and the instances it sends. Each round times:
  - direct WADO-RS of the series with httpx (the wire limit, the same server);
  - one daemon with a private, empty cache: ``cat`` of every file, one after the other;
  - ``--daemons`` daemons (default 4) over one empty shared cache directory, each its own mount
    and process: all of them ``cat`` every file at the same time (wall time until the last ends);
  - the contention floor: one daemon downloading the series while the others read it from
    private caches filled beforehand, all at once (the same work, nothing shared);
  - the same daemons doing it again, the cache full (the floor of that step on this machine: the
    daemons' own reads, which compete for its cores, and nothing fetched).
The listings are made before the clock starts, in both cases. Prints the medians with the
ratios to the direct route and to the daemon alone, and what the PACS sent for each.
Run: ``benchmarks/run.sh --cluster`` (``--rounds N``, ``--daemons N``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import routes  # noqa: E402
from benchmarks.run import SERIES  # noqa: E402
from tests.mounting import MountFactory  # noqa: E402
from trolleyfs.testing.data import generate  # noqa: E402
from trolleyfs.testing.pacs import EmbeddedPacs  # noqa: E402

QUIET = {"log_level": "WARNING", "listing_ttl": 600}


class Sent:
    """What the PACS sent during a block: WADO-RS requests, instances, bytes."""

    def __init__(self, pacs: EmbeddedPacs) -> None:
        self.pacs = pacs

    def __enter__(self) -> Sent:
        self._requests = self.pacs.count("wado-rs")
        self._sent = dict(self.pacs.sent)
        return self

    def __exit__(self, *exc_info: object) -> None:
        counts = {uid: n - self._sent.get(uid, 0) for uid, n in self.pacs.sent.items()}
        self.requests = self.pacs.count("wado-rs") - self._requests
        self.instances = sum(counts.values())
        self.bytes = sum(len(self.pacs.instances[uid].data) * n for uid, n in counts.items())


def one_round(pacs: EmbeddedPacs, work: Path, daemons: int, samples: dict[str, list], facts: dict[str, Sent]) -> None:
    series = next(iter(pacs.instances.values()))
    url = f"{pacs.dicomweb_url}/studies/{series.value('StudyInstanceUID')}/series/{series.value('SeriesInstanceUID')}"
    with Sent(pacs) as sent:
        samples.setdefault("direct WADO-RS, httpx", []).append(routes.timed(lambda: routes.httpx_download(url, work / "httpx")))
    facts["direct WADO-RS, httpx"] = sent
    mounts = MountFactory(work / "alone")
    (work / "alone").mkdir()
    try:
        mounted = mounts(pacs.dicomweb_url, **QUIET)
        files = routes.dicom_files(mounted.patients)
        with Sent(pacs) as sent:
            samples.setdefault("one daemon, private cache", []).append(routes.timed(lambda: routes.cat(files)))
        facts["one daemon, private cache"] = sent
    finally:
        mounts.unmount_all()
    contention_floor(pacs, work, daemons, samples, facts)
    cluster = MountFactory(work / "cluster")
    (work / "cluster").mkdir()
    name = f"{daemons} daemons, one shared cache"
    try:
        mounted_all = [cluster(pacs.dicomweb_url, cache_mode="shared", **QUIET) for _ in range(daemons)]
        listings = [routes.dicom_files(mounted.patients) for mounted in mounted_all]
        with Sent(pacs) as sent, ThreadPoolExecutor(daemons) as pool:
            seconds = routes.timed(lambda: list(pool.map(routes.cat, listings)))
        samples.setdefault(name, []).append(seconds)
        facts[name] = sent
        facts[name].published = sum(mounted.stats()["instances_downloaded"] for mounted in mounted_all)  # type: ignore[attr-defined]
        with Sent(pacs) as sent, ThreadPoolExecutor(daemons) as pool:  # the floor: the same reads, nothing to fetch
            seconds = routes.timed(lambda: list(pool.map(routes.cat, listings)))
        samples.setdefault(f"{name}, again (warm)", []).append(seconds)
        facts[f"{name}, again (warm)"] = sent
    finally:
        cluster.unmount_all()


def contention_floor(pacs: EmbeddedPacs, work: Path, daemons: int, samples: dict[str, list], facts: dict[str, Sent]) -> None:
    """The work no sharing can avoid, with nothing shared: one daemon downloads the series while
    the others read it from private caches filled beforehand (by a mount since unmounted, so that
    the kernel's page cache of the new mount is empty and the daemon serves every read, as a
    daemon of the shared cache must), all at once on this machine's cores."""
    (work / "floor").mkdir()
    mounts = [MountFactory(work / "floor" / str(index)) for index in range(daemons)]
    try:
        for index, factory in enumerate(mounts):
            (work / "floor" / str(index)).mkdir()
            if index:
                filler = factory(pacs.dicomweb_url, **QUIET)
                routes.cat(routes.dicom_files(filler.patients))
                filler.unmount()
            factory(pacs.dicomweb_url, **QUIET)
        listings = [routes.dicom_files(factory.mounts[-1].patients) for factory in mounts]
        with Sent(pacs) as sent, ThreadPoolExecutor(daemons) as pool:
            seconds = routes.timed(lambda: list(pool.map(routes.cat, listings)))
        samples.setdefault(FLOOR, []).append(seconds)
        facts[FLOOR] = sent
    finally:
        for factory in mounts:
            factory.unmount_all()


FLOOR = "floor: 1 cold + 3 restarted, private"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemons", type=int, default=4)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {}
    facts: dict[str, Sent] = {}
    with EmbeddedPacs(generate(SERIES)) as pacs, tempfile.TemporaryDirectory(prefix="trolleyfs-cluster-") as tmp:
        size = sum(len(instance.data) for instance in pacs.instances.values())
        for round_number in range(args.rounds):
            work = Path(tmp) / str(round_number)
            work.mkdir()
            one_round(pacs, work, args.daemons, samples, facts)
    medians = {route: statistics.median(values) for route, values in samples.items()}
    direct, alone = medians["direct WADO-RS, httpx"], medians["one daemon, private cache"]
    print(f"\nEmbedded PACS, {SERIES.instances_per_series} x 512x512 CT ({size / 1e6:.0f} MB), "
          f"{args.rounds} rounds, medians; PACS counts from the last round\n")
    print(f"| {'route':<42} | {'seconds':>7} | {'x direct':>8} | {'x alone':>7} | {'WADO-RS requests':>16} "
          f"| {'instances sent':>14} | {'MB sent':>7} |")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 18}|{'-' * 16}|{'-' * 9}|")
    for route, median in medians.items():
        sent = facts[route]
        print(f"| {route:<42} | {median:7.3f} | {median / direct:8.2f} | {median / alone:7.2f} | {sent.requests:16} "
              f"| {sent.instances:14} | {sent.bytes / 1e6:7.1f} |")
    cluster_name = f"{args.daemons} daemons, one shared cache"
    cluster, single = facts[cluster_name], facts["one daemon, private cache"]
    print(f"\n- instances published by the {args.daemons} daemons together: {cluster.published}"  # type: ignore[attr-defined]
          f" (the series has {SERIES.instances_per_series})")
    print("\nAcceptance (issue 13)\n")
    checks = {
        f"{args.daemons} daemons: wall time vs the contention floor (<= 1.5)": (medians[cluster_name] / medians[FLOOR], 1.5),
        f"{args.daemons} daemons: PACS bytes vs one daemon alone (<= 1.00)": (cluster.bytes / single.bytes, 1.0),
        f"{args.daemons} daemons: wall time vs one daemon alone (<= 1.5)": (medians[cluster_name] / alone, 1.5),
    }
    for check, (value, bound) in checks.items():
        print(f"- {check}: {value:.2f} -> {'met' if value <= bound else 'NOT met'}")


if __name__ == "__main__":
    main()
