"""``trolleyfs demo``: the embedded PACS with generated sample patients, mounted in the foreground."""

from __future__ import annotations

import tempfile
from pathlib import Path

from trolleyfs.config import load_config
from trolleyfs.daemon import run_foreground
from trolleyfs.testing.data import SAMPLE_PATIENTS, SampleSpec, generate
from trolleyfs.testing.pacs import EmbeddedPacs

DEMO_SPEC = SampleSpec(patients=SAMPLE_PATIENTS, rows=128, columns=128)


def run_demo(mountpoint: Path, options: dict[str, str]) -> int:
    mountpoint = mountpoint.resolve()
    mountpoint.mkdir(parents=True, exist_ok=True)
    with EmbeddedPacs(generate(DEMO_SPEC)) as pacs, tempfile.TemporaryDirectory(prefix="trolleyfs-demo-") as cache:
        endpoints = {"wado_uri_url": pacs.wado_uri_url, "mint_url": f"{pacs.base_url}/mint",
                     "rad69_url": f"{pacs.base_url}/rad69"}
        config = load_config(
            {"cache_dir": cache, "log_level": "WARNING", **endpoints, **options, "source": pacs.dicomweb_url}
        )
        print(
            f"trolleyfs demo: an embedded PACS with {len(pacs.instances)} instances serves DICOMweb at "
            f"{pacs.dicomweb_url}, WADO-URI, MINT and RAD-69 under {pacs.base_url}\n"
            f"(searcher {config.resolved_searcher}, downloader {config.resolved_downloader}; try also "
            "-o searcher=mint,downloader=rad69)\n"
            f"mounting it on {mountpoint}; in another terminal try:\n\n"
            f"    ls -R {mountpoint}/patients | head -40\n"
            f"    find {mountpoint}/patients -name '*.dcm' | head\n"
            f"    dcmdump \"$(find {mountpoint}/patients -name '*.dcm' | head -1)\" | head -30\n"
            f"    cat {mountpoint}/.trolleyfs/stats\n\n"
            "Ctrl-C unmounts and stops the PACS.",
            flush=True,
        )
        return run_foreground(config, mountpoint)
