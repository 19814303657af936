"""The soak (benchmarks/soak.py) in short: many reads through a real mount with a small cache and
injected faults; every byte right, no error, and the daemon alive."""

from __future__ import annotations

from benchmarks.soak import soak


def test_a_short_soak_reads_right_bytes_without_errors(fuse_available, tmp_path):
    report = soak(reads=10_000, seconds=600, work=tmp_path, sample=5_000, fault_every=1_000)
    assert report.reads == 10_000
    assert report.wrong_bytes == 0
    assert report.errors == []
    assert report.faults_injected == 10
    assert report.stats["cache_hits"] > 0 and report.stats["instances_downloaded"] > 40  # evicted, fetched again
