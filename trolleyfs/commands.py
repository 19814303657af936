"""The commands that work on a live mount or a cache from outside the daemon.

``status`` reads the daemon's counters from ``MOUNTPOINT/.trolleyfs/stats``; ``prefetch`` reads
files through the mount (so the daemon caches them) — both run in their own process, never in
the daemon's. ``cache`` looks at or empties a cache directory that no daemon is using.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from trolleyfs.cache import LAYOUT_VERSION
from trolleyfs.shared_cache import LAYOUT_VERSION as SHARED_LAYOUT_VERSION
from trolleyfs.errors import ConfigError

_CHUNK = 1024 * 1024
LOCK_NAME = "lock"


def read_stats(mountpoint: Path) -> dict:
    path = mountpoint / ".trolleyfs" / "stats"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{mountpoint} is not a live trolleyfs mount ({exc})") from exc


def format_status(mountpoint: Path, stats: dict) -> str:
    opened = stats["cache_hits"] + stats["instances_downloaded"]
    hit_ratio = f"{stats['cache_hits'] / opened:.0%}" if opened else "-"
    errors = ", ".join(f"{name} {count}" for name, count in sorted(stats["errors"].items())) or "none"
    rows = [
        ("mount", str(mountpoint)),
        ("cache", f"{_human(stats['cache_bytes'])} of {_human(stats['cache_max_bytes'])} in {stats['cache_files']} files"),
        ("cache hit ratio", f"{hit_ratio} ({stats['cache_hits']} hits, {stats['instances_downloaded']} downloaded)"),
        (f"searches ({stats['searcher']})", str(stats["searches"])),
        (f"download requests ({stats['downloader']})", str(stats["download_requests"])),
        ("downloaded", _human(stats["bytes_downloaded"])),
        ("downloads in flight", str(stats["downloads_in_flight"])),
        ("read-aheads", str(stats["read_aheads"])),
        ("open files", str(stats["open_files"])),
        ("errors returned", errors),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def prefetch(paths: list[Path], out: TextIO = sys.stderr, quiet: bool = False) -> int:
    """Read every instance file under ``paths`` through the mount; returns how many could not be read."""
    files = [file for path in paths for file in _files(path)]
    total = len(files)
    failed = 0
    done_bytes = 0
    for index, file in enumerate(files, 1):
        try:
            with open(file, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    done_bytes += len(chunk)
        except OSError as exc:
            failed += 1
            print(f"\ntrolleyfs prefetch: {file}: {exc.strerror}", file=out)
        if not quiet:
            width = 30
            filled = width * index // total
            bar = "#" * filled + "." * (width - filled)
            print(f"\r[{bar}] {index}/{total} files, {_human(done_bytes)}", end="", file=out, flush=True)
    if not quiet and total:
        print(file=out)
    return failed


def _files(path: Path) -> Iterator[Path]:
    """The instance files under ``path`` (the sidecars are generated, there is nothing to fetch)."""
    if path.is_dir():
        for root, _, names in sorted(os.walk(path)):
            yield from (Path(root) / name for name in sorted(names) if name.endswith(".dcm"))
    else:
        yield path


@contextmanager
def cache_lock(cache_dir: Path, shared: bool = False) -> Iterator[None]:
    """Held by a daemon for as long as it uses ``cache_dir``, so no two use one private cache at
    once and ``cache clear`` never pulls files from under a mount; daemons of a shared cache
    (``shared``) hold it together."""
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(cache_dir / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"cache directory {cache_dir} is in use by a running trolleyfs") from None
        yield


def cache_info(cache_dir: Path) -> str:
    files = [*(cache_dir / LAYOUT_VERSION / "objects").glob("*/*.dcm"),
             *(cache_dir / SHARED_LAYOUT_VERSION).glob("*/objects/*/*.dcm")]
    size = sum(file.stat().st_size for file in files)
    return f"cache directory  {cache_dir}\nfiles            {len(files)}\nsize             {_human(size)}"


def cache_clear(cache_dir: Path) -> str:
    with cache_lock(cache_dir):
        for layout in (LAYOUT_VERSION, SHARED_LAYOUT_VERSION):
            shutil.rmtree(cache_dir / layout, ignore_errors=True)
    return f"cleared {cache_dir}"
