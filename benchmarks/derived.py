"""Benchmark: the derived views (issue 14) against the direct route to the same result.

One 512x512 CT series in the embedded PACS (this process; it does not render, so a preview is
made from its downloaded middle instance). Each round, with a new daemon and an empty cache:
  - direct NIfTI: the series by one WADO-RS request (httpx), then dcm2niix (the same binary and
    options as /nifti) over the same files written to a local folder — the two parts timed apart
    and added;
  - ``cat /nifti/.../series.nii``, cold (download + conversion through the mount), then warm;
  - direct instance: one instance by WADO-RS (httpx), against a cold ``cat preview.png``;
  - direct series again, against a cold ``cat`` of every /deid file of the series.
Listings are made before the clock starts. Prints medians and the ratios to the direct routes.
Run: ``benchmarks/run.sh --derived`` (``--rounds N``, ``--instances N``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dcm2niix  # noqa: E402

from benchmarks import routes  # noqa: E402
from benchmarks.run import SERIES  # noqa: E402
from tests.mounting import MountFactory  # noqa: E402
from trolleyfs.derived.nifti import OPTIONS  # noqa: E402
from trolleyfs.testing.data import generate  # noqa: E402
from trolleyfs.testing.pacs import EmbeddedPacs  # noqa: E402

QUIET = {"log_level": "WARNING", "listing_ttl": 600}
SECRET = "benchmark secret, 24 chars+"


def one_round(pacs: EmbeddedPacs, work: Path, samples: dict[str, list[float]]) -> None:
    first = next(iter(pacs.instances.values()))
    study_uid, series_uid = first.value("StudyInstanceUID"), first.value("SeriesInstanceUID")
    series_url = f"{pacs.dicomweb_url}/studies/{study_uid}/series/{series_uid}"

    def add(route: str, seconds: float) -> None:
        samples.setdefault(route, []).append(seconds)

    download = routes.timed(lambda: routes.httpx_download(series_url, work / "series.multipart"))
    local = work / "local"
    local.mkdir()
    for index, instance in enumerate(pacs.instances.values()):
        (local / f"{index}.dcm").write_bytes(instance.data)
    (work / "out").mkdir()
    convert = routes.timed(lambda: subprocess.run([dcm2niix.bin, *OPTIONS, "-o", str(work / "out"), str(local)],
                                                  check=True, capture_output=True))
    add("direct: WADO-RS series (httpx)", download)
    add("direct: dcm2niix on local files", convert)
    add("direct NIfTI: download + dcm2niix", download + convert)
    add("direct: WADO-RS one instance (httpx)", routes.timed(
        lambda: routes.httpx_download(f"{series_url}/instances/{first.value('SOPInstanceUID')}", work / "one")))
    credentials = work / "credentials.toml"
    credentials.write_text(f'deid_secret = "{SECRET}"\n')
    credentials.chmod(0o600)
    mounts = MountFactory(work / "mounts")
    (work / "mounts").mkdir()
    try:
        mounted = mounts(pacs.dicomweb_url, credentials_file=credentials, **QUIET)
        (nifti_series,) = [p for p in (mounted.path / "nifti" / "studies" / study_uid).iterdir() if p.is_dir()]
        nii = nifti_series / "series.nii"
        add("trolleyfs: cat series.nii, cold", routes.timed(lambda: routes.cat([nii])))
        add("trolleyfs: cat series.nii, warm", routes.timed(lambda: routes.cat([nii])))
    finally:
        mounts.unmount_all()
    for route, folder in (("preview", "patients"), ("deid", "deid/patients")):
        mounts = MountFactory(work / route)
        (work / route).mkdir()
        try:
            mounted = mounts(pacs.dicomweb_url, credentials_file=credentials, **QUIET)
            series = next(p for p in (mounted.path / folder).glob("*/*/*") if p.is_dir())  # patient/study/series
            if route == "preview":
                add("trolleyfs: cat preview.png, cold", routes.timed(lambda: routes.cat([series / "preview.png"])))
            else:
                files = sorted(series.iterdir())
                add("trolleyfs: cat every /deid file, cold", routes.timed(lambda: routes.cat(files)))
        finally:
            mounts.unmount_all()


RATIOS = {
    "trolleyfs: cat series.nii, cold": "direct NIfTI: download + dcm2niix",
    "trolleyfs: cat series.nii, warm": "direct NIfTI: download + dcm2niix",
    "trolleyfs: cat preview.png, cold": "direct: WADO-RS one instance (httpx)",
    "trolleyfs: cat every /deid file, cold": "direct: WADO-RS series (httpx)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=SERIES.instances_per_series)
    args = parser.parse_args()
    spec = replace(SERIES, instances_per_series=args.instances)
    samples: dict[str, list[float]] = {}
    with EmbeddedPacs(generate(spec)) as pacs, tempfile.TemporaryDirectory(prefix="trolleyfs-derived-") as tmp:
        size = sum(len(instance.data) for instance in pacs.instances.values())
        for round_number in range(args.rounds):
            work = Path(tmp) / str(round_number)
            work.mkdir()
            one_round(pacs, work, samples)
    medians = {route: statistics.median(values) for route, values in samples.items()}
    print(f"\nEmbedded PACS, {args.instances} x {spec.rows}x{spec.columns} CT ({size / 1e6:.0f} MB), "
          f"{args.rounds} rounds, medians\n")
    print(f"| {'route':<40} | {'seconds':>7} | {'ratio':>6} | compared with |")
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 8}|{'-' * 15}|")
    for route, median in medians.items():
        against = RATIOS.get(route)
        ratio = f"{median / medians[against]:6.2f}" if against else " " * 6
        print(f"| {route:<40} | {median:7.3f} | {ratio} | {against or ''} |")


if __name__ == "__main__":
    main()
