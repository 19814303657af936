"""Security: no patient data in the daemon's log at INFO and above, whatever fails.

A mount at log_level=INFO is driven through failing searches (an error answer that echoes the
request, a search that times out, garbage) and failing downloads, by patient ID, accession
number and patient name; its log must never hold any of them. (DEBUG is for diagnosis on the
operator's own terms and may.)"""

from __future__ import annotations

import errno

import pytest

from trolleyfs.testing.data import SampleSpec, generate
from trolleyfs.testing.pacs import EmbeddedPacs

PATIENT_ID, FAMILY_NAME = "PRIV-4711", "SECRETNAME"
SPEC = SampleSpec(patients=((PATIENT_ID, f"{FAMILY_NAME}^JANE"),), studies_per_patient=1, series_per_study=1,
                  instances_per_series=4, seed="trolleyfs-privacy")


@pytest.fixture
def private_pacs():
    with EmbeddedPacs(generate(SPEC)) as server:
        yield server


def test_failures_never_put_patient_data_in_the_log(mount, private_pacs):
    pacs = private_pacs
    accession = next(iter(pacs.instances.values())).value("AccessionNumber")
    mounted = mount(pacs.dicomweb_url, log_level="INFO", listing_ttl=0, timeout=1, retries=0, readahead_max=0)
    places = [
        mounted.patients / PATIENT_ID,
        mounted.path / "accession" / accession,
        mounted.path / "query" / f"PatientName={FAMILY_NAME}*",
        mounted.path / "query" / f"PatientID={PATIENT_ID}&AccessionNumber={accession}",
    ]
    files = mounted.files()
    faults = (("echo", 400), ("echo", 500), ("hang", 0), ("garbage", 0))
    for file, (action, status) in zip(files, faults, strict=True):  # a file not cached yet each time
        pacs.faults.add("qido", action, status=status)
        for place in places:
            with pytest.raises(OSError) as raised:
                list(place.iterdir())
            assert raised.value.errno in (errno.EIO, errno.ENOENT)
        pacs.faults.clear()
        pacs.faults.add("wado-rs", action, status=status)
        with pytest.raises(OSError):
            file.read_bytes()
        pacs.faults.clear()
        assert file.read_bytes()[128:132] == b"DICM"  # and back: an outage ends, a new one starts
        (mounted.path / ".trolleyfs" / "stats").read_text()
    log = mounted.log_text()
    assert "WARNING" in log  # the failures were logged ...
    for secret in (PATIENT_ID, FAMILY_NAME, accession):
        assert secret.lower() not in log.lower()  # ... without who they were about
