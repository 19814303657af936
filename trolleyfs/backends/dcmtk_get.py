"""C-GET through DCMTK's ``getscu`` as a child process: the DIMSE transport for speed.

pynetdicom's own C-GET of a 200-slice CT takes ~3.5× getscu's time on the same server, whatever
is done with the bytes (its DUL reactor handles one PDU per loop turn: docs/performance.md). With
``downloader=c-get-dcmtk`` each fetch runs Debian's ``getscu`` (package ``dcmtk``) with the same
AE titles, timeouts and retrieve keys as ``c-get``, receiving bit-preserving (``+B``: the dataset
bytes as the peer sent them) into a private temporary folder. While it runs, the folder is looked
at every ``_POLL`` seconds and each file getscu has finished — one it no longer holds open, as
``/proc/<pid>/fd`` tells (file times are too coarse to tell the one it writes now: two files
written within a clock tick have the same mtime) — goes into the sink from a worker thread,
identified and admitted like any other download, so that readers get a series' first files
before its last have come; when it ends well the rest follows, and the folder is removed (after a
failure only the files seen finished were kept: the last one may be cut off). getscu proposes DCMTK's list of storage classes with the uncompressed transfer
syntaxes, so a server storing compressed images transcodes them, as it would for ``c-get``'s
defaults. Cancelling a fetch kills getscu. ``TCP_NODELAY=1`` is set for it: Debian's DCMTK
leaves Nagle on otherwise and each sub-operation stalls ~45 ms.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import trio
from pydicom.multival import MultiValue

from trolleyfs.backends.base import InstanceSink
from trolleyfs.backends.dimse_retrieve import retrieve_identifier
from trolleyfs.config import DimseNode
from trolleyfs.errors import PacsError
from trolleyfs.model import Reference
from trolleyfs.priority import Slots, reserved_for_readers

log = logging.getLogger(__name__)
GETSCU = "getscu"
_POLL = 0.02
"""Seconds between two looks at the files getscu has written."""


def getscu_missing() -> str | None:
    return None if shutil.which(GETSCU) else "getscu (Debian package dcmtk) is not installed"


class DcmtkGet:
    def __init__(
        self, node: DimseNode, calling_aet: str, *, acse_timeout: float, dimse_timeout: float,
        network_timeout: float, max_associations: int,
    ) -> None:
        self.node = node
        self.calling_aet = calling_aet
        self._timeouts = [str(math.ceil(seconds)) for seconds in (acse_timeout, dimse_timeout, network_timeout)]
        self.slots = Slots(max_associations, reserved_for_readers(max_associations))

    def __str__(self) -> str:
        return f"{self.node.ae_title}@{self.node.host}:{self.node.port} (getscu)"

    def command(self, reference: Reference, output: Path) -> list[str]:
        acse, dimse, network = self._timeouts
        keys = []
        for element in retrieve_identifier(reference):
            value = element.value
            text = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
            keys += ["-k", f"{element.keyword}={text}"]
        return [
            GETSCU, "-S", "-aet", self.calling_aet, "-aec", self.node.ae_title, self.node.host, str(self.node.port),
            "+B", "-od", str(output), "-ta", acse, "-td", dimse, "-to", network, *keys,
        ]

    async def fetch(self, reference: Reference, sink: InstanceSink) -> None:
        with tempfile.TemporaryDirectory(prefix="trolleyfs-getscu-") as folder:
            output, messages = Path(folder) / "received", Path(folder) / "getscu.log"
            output.mkdir()
            received = 0
            async with self.slots.slot():
                with open(messages, "wb") as log_file:
                    try:
                        process = await trio.lowlevel.open_process(
                            self.command(reference, output), stdout=subprocess.DEVNULL, stderr=log_file,
                            env={**os.environ, "TCP_NODELAY": "1"},
                        )
                    except OSError as exc:
                        raise PacsError(f"C-GET from {self}: cannot run getscu: {exc}") from exc
                    try:
                        while process.poll() is None:
                            with trio.move_on_after(_POLL):
                                await process.wait()
                            if process.returncode is None:
                                received += await trio.to_thread.run_sync(
                                    _store_finished, output, sink, reference, process.pid)
                        if process.returncode == 0:
                            received += await trio.to_thread.run_sync(_store_finished, output, sink, reference, None)
                    finally:
                        if process.returncode is None:  # cancelled: getscu must not outlive the fetch
                            process.kill()
                            with trio.CancelScope(shield=True):
                                await process.wait()
            if process.returncode != 0:
                # its messages name UIDs and may quote the server: DEBUG only
                log.debug("getscu: %s", messages.read_bytes().decode("utf-8", "replace")[-2000:])
                raise PacsError(f"C-GET from {self}: getscu failed (exit status {process.returncode}) "
                                f"after {received} instances")
        if not received:
            raise PacsError(f"C-GET from {self}: nothing was received")


def _store_finished(output: Path, sink: InstanceSink, reference: Reference, writer_pid: int | None) -> int:
    """In a worker thread: put the files getscu has finished into the sink and delete them: those
    process ``writer_pid`` does not hold open, or all of them (``None``: it ended well)."""
    files = list(output.iterdir())  # listed before looking at what is open: a file listed was created
    if writer_pid is not None and files:
        held = _files_held_open(writer_pid)
        if held is None:
            return 0  # it has just ended: how well, its exit status tells
        files = [path for path in files if _file_id(path) not in held]
    return _store_all(sorted(files), sink, reference)


def _files_held_open(pid: int) -> set[tuple[int, int]] | None:
    """(device, inode) of every file process ``pid`` has open now; None once it has gone."""
    descriptors = Path(f"/proc/{pid}/fd")
    try:
        entries = list(descriptors.iterdir())
    except FileNotFoundError:
        return None
    held = set()
    for entry in entries:
        try:
            found = entry.stat()  # follows the descriptor to the file it is open on
        except OSError:
            continue  # closed since it was listed
        held.add((found.st_dev, found.st_ino))
    return held


def _file_id(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_dev, found.st_ino


def _store_all(files: list[Path], sink: InstanceSink, reference: Reference) -> int:
    """In a worker thread: each file getscu wrote into the sink; how many there were."""
    for path in files:
        data = path.read_bytes()
        part = sink.open_part(reference, len(data))
        try:
            part.write(memoryview(data))
            part.end()
        except BaseException:
            part.abort()
            raise
        path.unlink()
    return len(files)
