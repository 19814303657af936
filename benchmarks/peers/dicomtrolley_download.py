"""Download one series with dicomtrolley 4.1, the peer library; run with the peers venv.

Usage: dicomtrolley_download.py DOWNLOADER URL SERIES_JSON OUTPUT_DIR

DOWNLOADER is ``wado-rs`` (one request per series), ``wado-uri`` (one request per instance) or
``wado-uri-async`` (the same from a thread pool). SERIES_JSON holds StudyInstanceUID,
SeriesInstanceUID and SOPInstanceUIDs. Files are written the way dicomtrolley writes them
(``Trolley.download`` into a flat folder). Prints one JSON line: seconds and file count. Timing
starts after the imports, as it does for every other route.

Orthanc 1.10 answers 400 to WADO-URI's ``contentType=application%2Fdicom`` (requests encodes the
slash); with ``--raw-slash`` a session hook sends it unencoded, so a number exists at all.
"""

import argparse
import json
import time
from pathlib import Path

import requests
from dicomtrolley.core import InstanceReference, SeriesReference
from dicomtrolley.storage import FlatStorageDir
from dicomtrolley.trolley import Trolley
from dicomtrolley.wado_rs import WadoRS
from dicomtrolley.wado_uri import WadoURI


class RawSlashSession(requests.Session):
    def prepare_request(self, request):
        prepared = super().prepare_request(request)
        prepared.url = prepared.url.replace("application%2Fdicom", "application/dicom")
        return prepared


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("downloader", choices=["wado-rs", "wado-uri", "wado-uri-async"])
    parser.add_argument("url")
    parser.add_argument("series_json", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--raw-slash", action="store_true")
    args = parser.parse_args()
    series = json.loads(args.series_json.read_text())
    session = RawSlashSession() if args.raw_slash else requests.Session()
    if args.downloader == "wado-rs":
        downloader = WadoRS(session=session, url=args.url)
        objects = [SeriesReference(study_uid=series["StudyInstanceUID"], series_uid=series["SeriesInstanceUID"])]
    else:
        downloader = WadoURI(session=session, url=args.url, use_async=args.downloader == "wado-uri-async")
        objects = [
            InstanceReference(study_uid=series["StudyInstanceUID"], series_uid=series["SeriesInstanceUID"],
                              instance_uid=uid)
            for uid in series["SOPInstanceUIDs"]
        ]
    trolley = Trolley(downloader=downloader, searcher=None, storage=FlatStorageDir(str(args.output)))
    started = time.perf_counter()
    trolley.download(objects, str(args.output))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "files": sum(1 for _ in args.output.iterdir())}))


if __name__ == "__main__":
    main()
