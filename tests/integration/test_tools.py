"""trolleyfs status, prefetch and cache, run as a user would, against a live mount."""

from __future__ import annotations

import json
import subprocess
import sys


def trolleyfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trolleyfs", *args], capture_output=True, text=True, timeout=120)


def test_status_shows_numbers_that_change_after_a_read(mount, pacs):
    mounted = mount(pacs.dicomweb_url, readahead_max=0)
    files = mounted.files()
    before = trolleyfs("status", str(mounted.path))
    assert before.returncode == 0
    assert "download requests (wado-rs)" in before.stdout and "searches (qido-rs)" in before.stdout
    files[0].read_bytes()
    files[0].read_bytes()
    after = json.loads(trolleyfs("status", "--json", str(mounted.path)).stdout)
    assert after["download_requests"] == 1 and after["cache_hits"] >= 1 and after["cache_files"] == 1
    text = trolleyfs("status", str(mounted.path)).stdout
    assert text != before.stdout
    assert "50%" in text or "67%" in text  # one download, one or two cache hits


def test_status_of_something_else_says_so(tmp_path):
    result = trolleyfs("status", str(tmp_path))
    assert result.returncode == 2 and "not a live trolleyfs mount" in result.stderr


def test_prefetch_downloads_a_study_with_progress_or_quietly(mount, pacs):
    mounted = mount(pacs.dicomweb_url)
    study = mounted.files()[0].parent.parent
    loud = trolleyfs("prefetch", str(study))
    assert loud.returncode == 0
    assert "20/20 files" in loud.stderr
    stats = mounted.stats()
    assert stats["cache_files"] == 20
    quiet = trolleyfs("prefetch", "-q", str(study))
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    assert mounted.stats()["instances_downloaded"] == stats["instances_downloaded"]  # all from the cache now


def test_prefetch_reports_files_it_cannot_read(mount, pacs):
    mounted = mount(pacs.dicomweb_url, timeout=1, retries=0, readahead_max=0)
    series = mounted.files()[0].parent
    pacs.faults.add("wado-rs", "status", status=500)
    result = trolleyfs("prefetch", "-q", str(series))
    assert result.returncode == 1
    assert "Input/output error" in result.stderr


def test_cache_info_and_clear_refuse_a_cache_in_use(mount, pacs):
    mounted = mount(pacs.dicomweb_url, readahead_max=0)
    mounted.files()[0].read_bytes()
    cache = f"cache_dir={mounted.path.parent / 'cache'}"
    info = trolleyfs("cache", "info", pacs.dicomweb_url, "-o", cache)
    assert info.returncode == 0 and "files            1" in info.stdout
    busy = trolleyfs("cache", "clear", pacs.dicomweb_url, "-o", cache)
    assert busy.returncode == 2 and "in use" in busy.stderr
    assert mounted.unmount() == 0
    cleared = trolleyfs("cache", "clear", pacs.dicomweb_url, "-o", cache)
    assert cleared.returncode == 0
    assert "files            0" in trolleyfs("cache", "info", pacs.dicomweb_url, "-o", cache).stdout
