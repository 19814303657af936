"""A graphical file manager (PCManFM under Xvfb) browsing a mount: it lists, stats and sniffs what
it shows and thumbnails the series' preview.png, and may download no instance but the one that
preview is made of."""

from __future__ import annotations

import json
import os
import subprocess
import time

from tests.conftest import need_tool


def _wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _quiet(read_stats, period: float = 2.0, timeout: float = 30.0) -> dict:  # noqa: ANN001
    """The mount's counters once they have not changed for ``period`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read_stats(), time.monotonic()
    while time.monotonic() - since < period:
        assert time.monotonic() < deadline, "the file manager never stopped asking"
        time.sleep(0.2)
        now = read_stats()
        if {k: now[k] for k in ("lookups", "searches")} != {k: last[k] for k in ("lookups", "searches")}:
            last, since = now, time.monotonic()
    return last


def test_pcmanfm_browses_a_day_down_to_a_series_and_downloads_at_most_its_preview_instance(mount, pacs, tmp_path):
    xvfb, pcmanfm, xdotool = need_tool("Xvfb"), need_tool("pcmanfm"), need_tool("xdotool")
    mounted = mount(pacs.dicomweb_url)
    date = next(iter(pacs.instances.values())).value("StudyDate")
    day = mounted.path / "dates" / date[:4] / date[4:6] / date[6:]
    study = sorted(day.iterdir())[0]
    series = sorted(p for p in study.iterdir() if p.is_dir())[0]
    display = f":{90 + os.getpid() % 100}"
    env = {**os.environ, "DISPLAY": display, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    screen = subprocess.Popen([xvfb, display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser = None
    try:
        _wait_for(lambda: subprocess.run([xdotool, "getdisplaygeometry"], env=env, capture_output=True).returncode == 0,
                  30, "Xvfb")
        browser = subprocess.Popen([pcmanfm, "--no-desktop", str(series)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: subprocess.run([xdotool, "search", "--name", series.name[:20]], env=env,
                                         capture_output=True).returncode == 0, 60, "the PCManFM window")
        stats = _quiet(mounted.stats)
        assert stats["instances_downloaded"] <= 1 and stats["download_requests"] <= 1
        assert stats["instances_downloaded"] == stats["derived_files_made"]  # the one, if any, is the preview's
        assert stats["searches"] >= 1  # it did list the series
    finally:
        for process in (browser, screen):
            if process is not None:
                process.terminate()
                process.wait(10)
    assert json.loads((mounted.path / ".trolleyfs" / "stats").read_text())["download_requests"] <= 1
