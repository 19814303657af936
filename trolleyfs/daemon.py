"""Running a mount: builds the trolley from a Config, serves FUSE until unmounted or signalled.

``serve`` is the foreground daemon. ``mount_in_background`` starts it as a detached child process
and returns once the child reports that the mount is ready (or why it failed), which is what
``trolleyfs mount`` without ``-f`` and mount(8) expect.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pyfuse3
import trio

from trolleyfs.commands import cache_lock
from trolleyfs.config import Config
from trolleyfs.backends.base import Searcher
from trolleyfs.errors import ConfigError, PacsRefused, TrolleyError, first_error
from trolleyfs.model import Query
from trolleyfs.fs.fuse import FuseOperations
from trolleyfs.mount import open_filesystem, search_deadline

log = logging.getLogger(__name__)

READY_FD_ENV = "TROLLEYFS_READY_FD"
READY = b"ready\n"


def fuse_options(config: Config) -> set[str]:
    fsname = config.source.replace(",", "%2C")
    options = set(pyfuse3.default_options) | {"ro", f"fsname={fsname}", "subtype=trolleyfs"}
    if config.allow_other:
        options.add("allow_other")
    return options


async def serve(config: Config, mountpoint: Path, on_ready: Callable[[], None] = lambda: None) -> None:
    """Mount ``mountpoint`` and serve it until it is unmounted, or SIGINT/SIGTERM arrives."""
    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    async with AsyncExitStack() as stack:
        stack.enter_context(cache_lock(config.resolved_cache_dir, shared=config.cache_mode == "shared"))
        filesystem = await stack.enter_async_context(open_filesystem(config))
        await _probe(filesystem.trolley.searcher, config)
        operations = FuseOperations(filesystem, uid=config.uid, gid=config.gid, umask=config.umask)
        pyfuse3.init(operations, str(mountpoint), fuse_options(config))
        try:
            log.info("mounted %s on %s (cache %s)", config.source, mountpoint, config.resolved_cache_dir)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_terminate_on_signal, nursery.cancel_scope)
                nursery.start_soon(_once_serving, config, mountpoint, on_ready)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)


async def _once_serving(config: Config, mountpoint: Path, on_ready: Callable[[], None]) -> None:
    """Finish setting up while the filesystem already answers, then report the mount ready."""
    if config.read_ahead_kb:
        await set_read_ahead(mountpoint, config.read_ahead_kb)
    on_ready()


async def set_read_ahead(mountpoint: Path, kilobytes: int) -> None:
    """Set the kernel's read-ahead window of our mount. FUSE can only lower it during the INIT
    handshake (its default is 128 KiB); the mount's bdi in sysfs can raise it, which turns a cold
    file's reads into fewer, larger requests. Needs root; without, the default stays (logged).

    Runs while the filesystem serves: the stat (from a worker thread, answered by this very
    process) returns only once INIT is done, so the handshake cannot undo the setting."""
    device = (await trio.to_thread.run_sync(os.stat, mountpoint)).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        knob.write_text(f"{kilobytes}\n")
    except OSError as exc:
        log.info("read-ahead window left at the kernel's default: cannot write %s: %s", knob, exc)


PROBE_QUERY = Query(StudyInstanceUID="1.2.826.0.1.3680043.8.498.1")  # a UID no PACS holds: a cheap search


async def _probe(searcher: Searcher, config: Config) -> None:
    """Ask the PACS one cheap question before mounting: refused credentials or AE titles fail the
    mount at once; a PACS that is merely down does not (it may come back)."""
    try:
        with trio.fail_after(min(search_deadline(config), config.start_timeout / 2)):
            await searcher.find_studies(PROBE_QUERY)
    except PacsRefused:
        raise
    except (TrolleyError, trio.TooSlowError) as exc:
        log.warning("the PACS does not answer now (%s); mounting anyway", exc)


async def _terminate_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def notify_systemd(state: str) -> None:
    """sd_notify(3) for `Type=notify` units: a datagram to $NOTIFY_SOCKET, if systemd set one."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        try:
            notify.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc)


def run_foreground(config: Config, mountpoint: Path) -> int:
    """The daemon's process: serve, telling a waiting parent (if any) and systemd (if it
    started us) when the mount is ready."""
    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))

    def report(message: bytes) -> None:
        nonlocal ready_fd
        if message == READY:
            notify_systemd(f"READY=1\nSTATUS=serving {mountpoint}")
        if ready_fd >= 0:
            os.write(ready_fd, message)
            os.close(ready_fd)
            ready_fd = -1

    try:
        with first_error():  # what ends the daemon is the first real error of its nurseries
            trio.run(serve, config, mountpoint, lambda: report(READY))
    except (TrolleyError, RuntimeError, OSError) as exc:
        log.error("%s", exc)
        report(f"{exc}\n".encode())
        return 1
    finally:
        notify_systemd("STOPPING=1")
    return 0


def mount_in_background(command: list[str], log_file: Path, mountpoint: Path, timeout: float) -> None:
    """Start the daemon ``command`` detached and wait until it reports ready; raise if it fails,
    or if it says nothing for ``timeout`` seconds (it is then stopped and its mount undone)."""
    read_end, write_end = os.pipe()
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_file, "ab") as log_output:
        process = subprocess.Popen(
            command,
            env={**os.environ, READY_FD_ENV: str(write_end)},
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=log_output,
            stderr=log_output,
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        answer = _read_until_closed(ready, timeout)
    if answer is None:
        _stop(process, mountpoint)
        raise TrolleyError(
            f"mount failed: the daemon did not report ready within {timeout:g}s (start_timeout); "
            f"it was stopped (log: {log_file})"
        )
    if answer != READY:
        process.wait()
        reason = answer.decode(errors="replace").strip() or f"daemon exited with status {process.returncode}"
        raise TrolleyError(f"mount failed: {reason} (log: {log_file})")


def _read_until_closed(pipe, timeout: float) -> bytes | None:  # type: ignore[no-untyped-def]
    """What the daemon writes before closing its end of the pipe, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    answer = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([pipe], [], [], left)
        if not readable:
            break
        chunk = os.read(pipe.fileno(), 4096)
        if not chunk:
            return answer
        answer += chunk
    return None


def _stop(process: subprocess.Popen, mountpoint: Path) -> None:
    """End a daemon that hangs in start-up, and the mount it may have made."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False, capture_output=True)
