"""Benchmark suite: trolleyfs against the wire limit, the peer library and the peer filesystem.

Starts a real Orthanc holding two data sets and times, in the same run and for ``--rounds`` rounds:

Series (200 x 512x512 CT, ~106 MB):
  - direct WADO-RS with httpx and with curl (the wire limit), DCMTK ``getscu`` (the DIMSE limit);
  - dicomtrolley 4.1 (the peer library) with its WadoRS and WadoURI downloaders;
  - ``rclone mount`` of Orthanc's WebDAV with ``--vfs-cache-mode full`` (the peer filesystem):
    ``find``, cold ``cat`` of every file, warm ``cat``;
  - trolleyfs with each downloader (c-get-dcmtk too): ``find``, cold ``cat``, warm ``cat``, ``cat``
    after a restart; for wado-rs also the series listing and ``find`` + cold ``cat`` on a fresh mount;
  - the floors: a no-op pyfuse3 mount of the same files (cold and warm page cache), a raw QIDO-RS
    search of the series, a bare pynetdicom C-GET;
  - ``cat`` of the same files from a local directory (page cache warm), the floor for warm reads.
Study (4 series x 500 small instances):
  - ``ls -lR`` of the study through trolleyfs (with its search count and downloaded bytes) and
    through rclone; cold ``cat`` of all 2,000 files through both; direct WADO-RS of the study.

Prints median tables with ratios and the issue's acceptance checks, and writes everything
(every sample) as JSON. Run: ``benchmarks/run.sh [--rounds N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import routes, streaming  # noqa: E402
from tests.mounting import MountFactory  # noqa: E402
from trolleyfs.fs.names import patient_dir_name  # noqa: E402
from trolleyfs.testing.data import SampleSpec, generate  # noqa: E402
from trolleyfs.testing.orthanc import Orthanc, free_port  # noqa: E402

CALLING_AET = "BENCH"
SERIES = SampleSpec(
    patients=(("BENCH-SERIES", "BENCH^SERIES"),), studies_per_patient=1, series_per_study=1,
    instances_per_series=200, rows=512, columns=512, seed="trolleyfs-benchmark",
)
STUDY = SampleSpec(
    patients=(("BENCH-STUDY", "BENCH^STUDY"),), studies_per_patient=1, series_per_study=4,
    instances_per_series=500, rows=64, columns=64, seed="trolleyfs-benchmark",
)
QUIET = {"log_level": "WARNING"}


@dataclass
class Table:
    """Samples per route of one data set, plus facts (counts) seen along the way."""

    title: str
    bytes: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)

    def record(self, route: str, seconds: float) -> None:
        self.samples.setdefault(route, []).append(seconds)

    def attempt(self, route: str, action) -> None:  # type: ignore[no-untyped-def]
        try:
            self.record(route, action())
        except Exception as exc:  # a peer failing is a result, not a crash of the benchmark
            self.failures[route] = " ".join(str(exc).split())[:160]

    def median(self, route: str) -> float | None:
        return statistics.median(self.samples[route]) if route in self.samples else None


@dataclass
class Orthancs:
    orthanc: Orthanc
    series: dict
    study: dict
    work: Path

    @property
    def dimse_source(self) -> str:
        return f"dicom://{self.orthanc.aet}@127.0.0.1:{self.orthanc.dicom_port}"


def series_round(env: Orthancs, table: Table, round_number: int) -> None:
    orthanc, work = env.orthanc, env.work / f"series-{round_number}"
    work.mkdir()
    url = f"{orthanc.dicomweb_url}/studies/{env.series['study']}/series/{env.series['series']}"
    table.record("direct WADO-RS, httpx", routes.timed(lambda: routes.httpx_download(url, work / "httpx")))
    table.record("direct WADO-RS, curl", routes.timed(lambda: routes.curl_download(url, work / "curl")))
    local = work / "getscu"
    local.mkdir()
    table.record("getscu (DCMTK C-GET)", routes.timed(
        lambda: routes.getscu(orthanc, CALLING_AET, env.series["study"], env.series["series"], local)))
    table.record("bare pynetdicom C-GET", routes.timed(
        lambda: routes.pynetdicom_get(orthanc, CALLING_AET, env.series["study"], env.series["series"])))
    local_files = sorted(local.iterdir())
    routes.cat(local_files)
    table.record("local disk: warm cat", routes.timed(lambda: routes.cat(local_files)))
    with routes.noop_mount(local, work) as noop:
        noop_files = sorted(noop.iterdir())
        table.record("no-op pyfuse3: cold cat", routes.timed(lambda: routes.cat(noop_files)))
        table.record("no-op pyfuse3: warm cat", routes.timed(lambda: routes.cat(noop_files)))
    table.record("raw QIDO-RS series search", routes.timed(
        lambda: routes.qido_instances(orthanc.dicomweb_url, env.series["study"], env.series["series"])))
    for name, downloader, raw_slash in (("WadoRS", "wado-rs", False), ("WadoURI", "wado-uri", False),
                                        ("WadoURI async", "wado-uri-async", False),
                                        ("WadoURI, slash unescaped for Orthanc", "wado-uri", True)):
        url = orthanc.dicomweb_url if downloader == "wado-rs" else orthanc.wado_uri_url
        target = work / f"dicomtrolley-{downloader}-{raw_slash}"
        table.attempt(f"dicomtrolley {name}",
                      lambda: routes.dicomtrolley(downloader, url, env.series["json"], target, raw_slash))
    with routes.rclone_mount(f"{orthanc.base_url}/webdav", work) as mounted:
        series_dir = mounted / env.series["study"] / env.series["series"]
        files: list[Path] = []
        table.record("rclone: find", routes.timed(lambda: files.extend(routes.dicom_files(series_dir))))
        assert len(files) == SERIES.instances_per_series, len(files)
        table.record("rclone: cold cat", routes.timed(lambda: routes.cat(files)))
        table.record("rclone: warm cat", routes.timed(lambda: routes.cat(files)))
    downloaders = {
        "wado-rs": (orthanc.dicomweb_url, {}),
        "wado-uri": (orthanc.dicomweb_url, {"downloader": "wado-uri", "wado_uri_url": orthanc.wado_uri_url}),
        "c-get": (env.dimse_source, {"calling_aet": CALLING_AET}),
        "c-get-dcmtk": (env.dimse_source, {"calling_aet": CALLING_AET, "downloader": "c-get-dcmtk"}),
        "c-move": (env.dimse_source, {"calling_aet": CALLING_AET, "downloader": "c-move",
                                      "move_port": orthanc.move_port}),
    }
    for name, (source, options) in downloaders.items():
        trolleyfs_series(table, work / name, name, source, options)


def trolleyfs_series(table: Table, work: Path, name: str, source: str, options: dict) -> None:
    work.mkdir()
    mounts = MountFactory(work)
    try:
        mounted = mounts(source, **QUIET, **options)
        patient = mounted.patients / patient_dir_name(SERIES.patients[0][0])
        files: list[Path] = []
        table.record(f"trolleyfs {name}: find", routes.timed(lambda: files.extend(routes.dicom_files(patient))))
        assert len(files) == SERIES.instances_per_series, len(files)
        table.record(f"trolleyfs {name}: cold cat", routes.timed(lambda: routes.cat(files)))
        table.record(f"trolleyfs {name}: warm cat", routes.timed(lambda: routes.cat(files)))
        mounted.unmount()
        remounted = mounts(source, **QUIET, **options)
        files = routes.dicom_files(remounted.patients / patient.name)
        table.record(f"trolleyfs {name}: cat after restart", routes.timed(lambda: routes.cat(files)))
        remounted.unmount()
        if name == "wado-rs":
            (work / "fresh").mkdir()
            fresh = MountFactory(work / "fresh")
            try:
                mounted = fresh(source, **QUIET, **options)
                series_dir = next(next((mounted.patients / patient.name).iterdir()).iterdir())
                table.record(f"trolleyfs {name}: series listing", routes.timed(lambda: routes.list_long(series_dir)))
                mounted.unmount()
                mounted = fresh(source, **QUIET, **options, cache_dir=work / "cache-fresh")  # empty
                table.record(f"trolleyfs {name}: find + cold cat", routes.timed(
                    lambda: routes.cat(routes.dicom_files(mounted.patients / patient.name))))
            finally:
                fresh.unmount_all()
    finally:
        mounts.unmount_all()


def study_round(env: Orthancs, table: Table, round_number: int) -> None:
    orthanc, work = env.orthanc, env.work / f"study-{round_number}"
    work.mkdir()
    url = f"{orthanc.dicomweb_url}/studies/{env.study['study']}"
    table.record("direct WADO-RS study, httpx", routes.timed(lambda: routes.httpx_download(url, work / "httpx")))
    table.record("direct WADO-RS study, curl", routes.timed(lambda: routes.curl_download(url, work / "curl")))
    table.record("raw QIDO-RS: the 4 series searches at once", routes.timed(
        lambda: routes.qido_instances_at_once(orthanc.dicomweb_url, env.study["study"], env.study["all_series"])))
    table.record("raw QIDO-RS slowest series search", max(
        routes.timed(lambda uid=uid: routes.qido_instances(orthanc.dicomweb_url, env.study["study"], uid))
        for uid in env.study["all_series"]))
    mounts = MountFactory(work)
    try:
        mounted = mounts(orthanc.dicomweb_url, **QUIET)
        study_dir = next((mounted.patients / patient_dir_name(STUDY.patients[0][0])).iterdir())
        before = mounted.stats()
        table.record("trolleyfs: ls -lR", routes.timed(lambda: routes.list_recursively(study_dir)))
        after = mounted.stats()
        table.facts["trolleyfs ls -lR: searches"] = after["searches"] - before["searches"]
        table.facts["trolleyfs ls -lR: instance bytes downloaded"] = after["bytes_downloaded"]
        files = routes.dicom_files(study_dir)
        assert len(files) == STUDY.series_per_study * STUDY.instances_per_series, len(files)
        table.record("trolleyfs: cold cat", routes.timed(lambda: routes.cat(files)))
        table.facts["trolleyfs cold cat: download requests"] = mounted.stats()["download_requests"]
    finally:
        mounts.unmount_all()
    with routes.rclone_mount(f"{orthanc.base_url}/webdav", work) as rclone:
        study_dir = rclone / env.study["study"]
        table.record("rclone: ls -lR", routes.timed(lambda: routes.list_recursively(study_dir)))
        files = routes.dicom_files(study_dir)
        table.record("rclone: cold cat", routes.timed(lambda: routes.cat(files)))


def print_table(table: Table, columns: dict[str, str | None]) -> None:
    """``columns`` maps a ratio column's title to the route it divides by."""
    print(f"\n{table.title}\n")
    cells = [f"{'route':<38}", f"{'seconds':>8}", f"{'MB/s':>6}", *(f"{title:>9}" for title in columns)]
    print("| " + " | ".join(cells) + " |")
    print("|" + "|".join("-" * (len(cell) + 2) for cell in cells) + "|")
    for route in table.samples:
        median = table.median(route)
        ratios = "".join(
            f" {median / base:9.2f} |" if (base := table.median(by or "")) else f" {'':>9} |"
            for by in columns.values()
        )
        print(f"| {route:<38} | {median:8.3f} | {table.bytes / 1e6 / median:6.0f} |{ratios}")
    for route, reason in table.failures.items():
        print(f"| {route:<38} | failed: {reason}")
    for fact, value in table.facts.items():
        print(f"- {fact}: {value}")


def acceptance(series: Table, study: Table, streams: Table) -> dict[str, dict]:
    cold = series.median("trolleyfs wado-rs: cold cat")
    peers = [m for r in series.samples if r.startswith("dicomtrolley") and (m := series.median(r))]

    def ratio(route: str, by: str, table: Table = series) -> float | None:
        top, bottom = table.median(route), table.median(by)
        return top / bottom if top is not None and bottom else None

    with_listing = series.median("trolleyfs wado-rs: find + cold cat")
    checks = {
        "cold cat vs curl (<= 3)": (ratio("trolleyfs wado-rs: cold cat", "direct WADO-RS, curl"), 3.0, "<="),
        "cold cat vs no-op pyfuse3 cold (<= 1.5)": (ratio("trolleyfs wado-rs: cold cat", "no-op pyfuse3: cold cat"),
                                                    1.5, "<="),
        "find + cold cat vs best dicomtrolley (<= 0.8)": (with_listing / min(peers) if peers and with_listing else None,
                                                          0.8, "<="),
        "find + cold cat vs rclone cold (<= 0.33)": (ratio("trolleyfs wado-rs: find + cold cat", "rclone: cold cat"),
                                                     1 / 3, "<="),
        "warm cat vs no-op pyfuse3 warm (<= 1.1)": (ratio("trolleyfs wado-rs: warm cat", "no-op pyfuse3: warm cat"),
                                                    1.1, "<="),
        "series listing vs raw QIDO-RS (<= 1.2)": (ratio("trolleyfs wado-rs: series listing", "raw QIDO-RS series search"),
                                                   1.2, "<="),
        "ls -lR of the study vs its slowest series search (<= 1.5)": (
            ratio("trolleyfs: ls -lR", "raw QIDO-RS slowest series search", study), 1.5, "<="),
        "C-GET cold cat vs getscu (<= 1.5)": (ratio("trolleyfs c-get: cold cat", "getscu (DCMTK C-GET)"), 1.5, "<="),
        "C-GET through getscu (c-get-dcmtk) cold cat vs getscu (<= 1.5)": (
            ratio("trolleyfs c-get-dcmtk: cold cat", "getscu (DCMTK C-GET)"), 1.5, "<="),
        "(floor) bare pynetdicom C-GET vs getscu": (ratio("bare pynetdicom C-GET", "getscu (DCMTK C-GET)"), 1.5, "<="),
        "(floor) the 4 series searches at once vs the slowest alone": (
            ratio("raw QIDO-RS: the 4 series searches at once", "raw QIDO-RS slowest series search", study), 1.5, "<="),
        "head -c 1 MB of a cold 512 MiB instance vs curl's first 1 MB, 50 MB/s link (<= 2)": (
            ratio("trolleyfs: head -c 1000000 of it, cold", "curl: first 1 MB of a 512 MiB instance at 50 MB/s", streams),
            2.0, "<="),
        "cold open during 10 read-aheads vs idle (<= 1.5)": (
            ratio("trolleyfs: open+cat of a cold file during 10 read-aheads", "trolleyfs: open+cat of a cold file, idle mount",
                  streams), 1.5, "<="),
        "cold series read vs best dicomtrolley (<= 1)": (cold / min(peers) if peers else None, 1.0, "<="),
        "rclone cold / trolleyfs cold (>= 3)": (series.median("rclone: cold cat") / cold, 3.0, ">="),
        "warm read vs local disk (<= 1.5)": (
            series.median("trolleyfs wado-rs: warm cat") / series.median("local disk: warm cat"), 1.5, "<="),
        "ls -lR of 4 x 500 study: instance bytes (== 0)": (
            float(study.facts["trolleyfs ls -lR: instance bytes downloaded"]), 0.0, "<="),
    }
    results = {}
    for name, (value, bound, op) in checks.items():
        met = value is not None and (value <= bound if op == "<=" else value >= bound)
        results[name] = {"value": value, "bound": bound, "met": met}
    return results


def describe(orthanc: Orthanc, spec: SampleSpec, work: Path, key: str) -> dict:
    instances = [i for i in orthanc.instances() if i["PatientID"] == spec.patients[0][0]]
    first = instances[0]
    description = {"study": first["StudyInstanceUID"], "series": first["SeriesInstanceUID"],
                   "all_series": sorted({i["SeriesInstanceUID"] for i in instances}), "json": work / f"{key}.json"}
    series_uids = [i["SOPInstanceUID"] for i in instances if i["SeriesInstanceUID"] == first["SeriesInstanceUID"]]
    description["json"].write_text(json.dumps({
        "StudyInstanceUID": first["StudyInstanceUID"], "SeriesInstanceUID": first["SeriesInstanceUID"],
        "SOPInstanceUIDs": series_uids,
    }))
    return description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trolleyfs-bench-") as tmp:
        work = Path(tmp)
        move_port = free_port()
        orthanc = Orthanc(work / "orthanc", modalities={
            CALLING_AET: {"AET": CALLING_AET, "Host": "127.0.0.1", "Port": move_port}}).start()
        orthanc.move_port = move_port
        try:
            orthanc.upload(generate(SERIES))
            orthanc.upload(generate(STUDY))
            env = Orthancs(orthanc, describe(orthanc, SERIES, work, "series"),
                           describe(orthanc, STUDY, work, "study"), work)
            series, study = run(env, args.rounds)
        finally:
            orthanc.stop()
        streams = Table("Streaming and contention, embedded PACS, medians")
        streaming.big_file_rounds(work, args.rounds, streams.record)
        streaming.contention_rounds(work, args.rounds, streams.record)
    print_table(series, {"x httpx": "direct WADO-RS, httpx", "x curl": "direct WADO-RS, curl",
                         "x local": "local disk: warm cat", "x no-op cold": "no-op pyfuse3: cold cat",
                         "x no-op warm": "no-op pyfuse3: warm cat"})
    print_table(study, {"x httpx": "direct WADO-RS study, httpx", "x curl": "direct WADO-RS study, curl"})
    print_table(streams, {"x curl 1 MB": "curl: first 1 MB of a 512 MiB instance at 50 MB/s",
                          "x idle": "trolleyfs: open+cat of a cold file, idle mount"})
    checks = acceptance(series, study, streams)
    print("\nAcceptance (issues 5 and 12)\n")
    for name, check in checks.items():
        value = "n/a" if check["value"] is None else f"{check['value']:.2f}"
        print(f"- {name}: {value} -> {'met' if check['met'] else 'NOT met'}")
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"kernel": platform.release(), "python": platform.python_version(),
                    "cpus": len(os.sched_getaffinity(0))},
        "rounds": args.rounds,
        "tables": [vars(series), vars(study), vars(streams)],
        "acceptance": checks,
    }
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwritten {args.json}")


def run(env: Orthancs, rounds: int) -> tuple[Table, Table]:
    series = Table("Series: 200 x 512x512 CT, medians")
    study = Table("Study: 4 series x 500 instances of 64x64, medians")
    direct = env.work / "warmup"
    # one direct download first, so Orthanc's own caches are warm for every route alike
    routes.httpx_download(f"{env.orthanc.dicomweb_url}/studies/{env.series['study']}", direct)
    routes.httpx_download(f"{env.orthanc.dicomweb_url}/studies/{env.study['study']}", env.work / "warmup-study")
    series.bytes = direct.stat().st_size
    study.bytes = (env.work / "warmup-study").stat().st_size
    for round_number in range(rounds):
        series_round(env, series, round_number)
        study_round(env, study, round_number)
    return series, study


if __name__ == "__main__":
    main()
