"""``mount.trolleyfs`` / ``mount.fuse.trolleyfs``: what mount(8) runs for ``-t trolleyfs`` and
fstab lines, with the helper calling convention ``SOURCE MOUNTPOINT [-sfnv] [-o options]``.

The generic options mount(8) and fstab pass are handled here (see GENERIC_OPTIONS); everything
else goes to ``trolleyfs mount`` unchanged, so the two accept the same options. ``rw`` is always
passed by mount(8) itself (whenever `ro` is not) and is ignored: the mount is read-only whatever
it says. Options that only make sense for writing are refused by name.
"""

from __future__ import annotations

import argparse
import sys

from trolleyfs.cli import main as trolleyfs_main
from trolleyfs.config import join_mount_options, parse_mount_options
from trolleyfs.errors import ConfigError

GENERIC_OPTIONS = frozenset(
    {
        "rw", "ro", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner",
        "group", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
        "strictatime", "nodiratime", "diratime", "async", "sync", "default_permissions", "loud", "silent",
    }
)
GENERIC_PREFIXES = ("x-", "comment=", "helper=")
WRITE_OPTIONS = frozenset({"writeback_cache", "atomic_o_trunc", "big_writes", "allow_write", "readwrite", "rw_cache"})


def split_options(text: str) -> tuple[dict[str, str], list[str]]:
    """(options for trolleyfs, generic options left out)."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in parse_mount_options(text).items():
        if key in WRITE_OPTIONS:
            raise ConfigError(f"{key}: trolleyfs is read-only and takes no write options")
        if key in GENERIC_OPTIONS or key.startswith(GENERIC_PREFIXES):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mount.trolleyfs", description="mount(8) helper for trolleyfs")
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-f", dest="fake", action="store_true", help="do everything but the mount")
    parser.add_argument("-s", dest="sloppy", action="store_true", help="ignored")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="ignored (no mtab here)")
    parser.add_argument("-v", dest="verbose", action="store_true", help="ignored")
    parser.add_argument("-t", dest="type", help="ignored (fuse.trolleyfs or trolleyfs)")
    args = parser.parse_args(argv)
    options: dict[str, str] = {}
    try:
        for text in args.options:
            options.update(split_options(text)[0])
    except ConfigError as exc:
        print(f"mount.trolleyfs: {exc}", file=sys.stderr)
        return 2
    if args.fake:
        return 0
    option_text = join_mount_options(options)
    return trolleyfs_main(["mount", args.source, args.mountpoint, *(["-o", option_text] if option_text else [])])


if __name__ == "__main__":
    sys.exit(main())
