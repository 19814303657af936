"""The ``trolleyfs`` command.

    trolleyfs mount SOURCE MOUNTPOINT [-f] [-o key=value[,key=value...]]
    trolleyfs demo [MOUNTPOINT] [-o key=value,...]
    trolleyfs status MOUNTPOINT
    trolleyfs prefetch [-q] PATH...
    trolleyfs cache info|clear SOURCE [-o key=value,...]

Exit status 0 once the mount is ready (or, with ``-f``, once it is unmounted cleanly); 1 when it
cannot be mounted, with the reason on stderr; 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import tempfile
from pathlib import Path

from trolleyfs import commands
from trolleyfs.config import Config, load_config, parse_mount_options
from trolleyfs.daemon import mount_in_background, run_foreground
from trolleyfs.errors import ConfigError, TrolleyError

DEFAULT_DEMO_MOUNTPOINT = Path(tempfile.gettempdir()) / "trolleyfs-demo"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trolleyfs", description="Mount a DICOM PACS as a filesystem.")
    commands = parser.add_subparsers(dest="command", required=True)
    mount = commands.add_parser("mount", help="mount a PACS")
    mount.add_argument("source", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    mount.add_argument("mountpoint", type=Path)
    _add_common(mount)
    demo = commands.add_parser("demo", help="mount an embedded sample PACS on 127.0.0.1")
    demo.add_argument("mountpoint", type=Path, nargs="?", default=DEFAULT_DEMO_MOUNTPOINT)
    _add_common(demo)
    status = commands.add_parser("status", help="what a live mount is doing")
    status.add_argument("mountpoint", type=Path)
    status.add_argument("--json", action="store_true", help="the raw counters")
    prefetch = commands.add_parser("prefetch", help="download patients, studies or series into the cache")
    prefetch.add_argument("paths", type=Path, nargs="+", help="directories or files inside a mount")
    prefetch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cache = commands.add_parser("cache", help="look at or empty a cache directory not in use")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("source", help="the SOURCE the cache belongs to (its default directory)")
    cache.add_argument("-o", dest="options", action="append", default=[], metavar="key=value[,...]")
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "-o", dest="options", action="append", default=[], metavar="key=value[,...]",
        help="mount options (see docs/options.md); may be repeated",
    )


def _options(raw: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for text in raw:
        options.update(parse_mount_options(text))
    return options


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s trolleyfs %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level != "DEBUG":  # a line per request or association is debugging detail
        for chatty in ("httpx", "pynetdicom"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("status", "prefetch", "cache"):
            return _outside_command(args)
        if args.command == "demo":
            from trolleyfs.demo import run_demo

            options = _options(args.options)
            _setup_logging(options.get("log_level", "WARNING"))
            return run_demo(args.mountpoint, options)
        config = load_config({**_options(args.options), "source": args.source})
    except ConfigError as exc:
        print(f"trolleyfs: {exc}", file=sys.stderr)
        return 2
    return _mount(config, args)


def _outside_command(args: argparse.Namespace) -> int:
    if args.command == "status":
        stats = commands.read_stats(args.mountpoint)
        print(json.dumps(stats, indent=2) if args.json else commands.format_status(args.mountpoint, stats))
        return 0
    if args.command == "prefetch":
        return 1 if commands.prefetch(args.paths, quiet=args.quiet) else 0
    cache_dir = load_config({**_options(args.options), "source": args.source}).resolved_cache_dir
    print(commands.cache_info(cache_dir) if args.action == "info" else commands.cache_clear(cache_dir))
    return 0


def _log_name(config: Config) -> str:
    """The log file of a daemon mounted in the background: one per host in a shared cache."""
    return "trolleyfs.log" if config.cache_mode == "private" else f"trolleyfs.{socket.gethostname()}.log"


def _mount(config: Config, args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.resolve()
    if args.foreground:
        _setup_logging(config.log_level)
        return run_foreground(config, mountpoint)
    command = [sys.executable, "-m", "trolleyfs", "mount", args.source, str(mountpoint), "-f",
               *(f"-o{text}" for text in args.options)]
    try:
        mount_in_background(command, config.resolved_cache_dir / _log_name(config), mountpoint, config.start_timeout)
    except TrolleyError as exc:
        print(f"trolleyfs: {exc}", file=sys.stderr)
        return 1
    return 0
