"""Two trolleyfs daemons sharing one cache directory on a GlusterFS volume, each on its own
mount of the volume, as two hosts would. Run by tests/integration/test_shared_cache_gluster.py in
private mount and UTS namespaces (the volume's mounts exist only there), with the embedded PACS's
URL and a work directory; prints what each daemon read (SHA-256 by SOPInstanceUID) and counted,
as JSON."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pydicom  # noqa: E402

from tests.mounting import MountFactory  # noqa: E402

VOLUME_SH = Path(__file__).with_name("volume.sh")


def read_all(files: list[Path]) -> dict[str, str]:
    read = {}
    for path in files:
        data = path.read_bytes()
        read[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = hashlib.sha256(data).hexdigest()
    return read


def main() -> None:
    source, work = sys.argv[1], Path(sys.argv[2])
    state, volume_mounts = work / "gluster", [work / "host1", work / "host2"]
    subprocess.run(["sh", str(VOLUME_SH), "start", str(state), *map(str, volume_mounts)], check=True,
                   stdout=sys.stderr)
    try:
        daemons = MountFactory(work)
        try:
            mounts = [daemons(source, cache_mode="shared", listing_ttl=600, cache_dir=volume / "trolleyfs-cache")
                      for volume in volume_mounts]
            listings = [mounted.files() for mounted in mounts]
            with ThreadPoolExecutor(len(mounts)) as pool:
                results = list(pool.map(read_all, listings))
            report = {
                "read": results,
                "stats": [mounted.stats() for mounted in mounts],
                "entries": sorted(path.name for path in (volume_mounts[1] / "trolleyfs-cache").glob("shared-v1/*/objects/*/*.dcm")),
                "entries_seen_by_the_other_mount": len(list((volume_mounts[0] / "trolleyfs-cache").glob("shared-v1/*/objects/*/*.dcm"))),
            }
        finally:
            daemons.unmount_all()
    finally:
        subprocess.run(["sh", str(VOLUME_SH), "stop", str(state)], check=False, stdout=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
