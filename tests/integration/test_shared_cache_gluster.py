"""The shared cache on a real distributed filesystem: a one-brick GlusterFS volume on loopback,
mounted twice through its FUSE client as two hosts would mount it, one daemon on each mount."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import need_tool

TWO_HOSTS = Path(__file__).parents[1] / "gluster" / "two_hosts.py"


def test_two_daemons_on_two_glusterfs_mounts_fetch_each_instance_once(fuse_available, pacs, tmp_path):
    for tool in ("glusterd", "gluster", "mount.glusterfs", "unshare"):
        need_tool(tool)
    finished = subprocess.run(
        ["unshare", "--mount", "--uts", "--fork", "--", sys.executable, str(TWO_HOSTS), pacs.dicomweb_url, str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    report = json.loads(finished.stdout)
    originals = {uid: hashlib.sha256(instance.data).hexdigest() for uid, instance in pacs.instances.items()}
    for read in report["read"]:
        assert read == originals  # every byte right, through both hosts
    assert sum(stats["instances_downloaded"] for stats in report["stats"]) == len(originals)
    assert len(report["entries"]) == len(originals) == report["entries_seen_by_the_other_mount"]
    assert set(pacs.sent) == set(originals)
    first_files = len({uid for uid, count in pacs.sent.items() if count > 1})
    # each instance sent once, but for the first file opened in each series (sent alone, then
    # again inside the series' read-ahead, as with a single daemon)
    assert sum(pacs.sent.values()) <= len(originals) + first_files
    assert first_files <= len({instance.value("SeriesInstanceUID") for instance in pacs.instances.values()})
