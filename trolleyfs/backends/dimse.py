"""What the DIMSE backends share: running whole associations in threads, reading statuses, and
turning identifiers into keyword records.

pynetdicom is blocking and threaded. Each operation runs on an association inside
``trio.to_thread`` under per-peer slots (background work never takes the last quarter). If the trio side is cancelled, the association is
aborted so its thread ends soon. C-FIND associations are kept for ``idle_time`` seconds and
reused, since browsing asks one search per directory; then they are released (A-RELEASE) by a
reaper thread, not left to time out and be aborted. pynetdicom reports a timeout or an
abort as an empty status dataset; :func:`status_category` turns that into an error, never into
"no results".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from trolleyfs.config import DimseNode
from trolleyfs.errors import PacsError, PacsRefused
from trolleyfs.priority import Slots, reserved_for_readers

log = logging.getLogger(__name__)

T = TypeVar("T")

_SPECIFIC_CHARACTER_SET = 0x00080005
_HEADER_KEYWORDS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"})


class DimsePeer:
    """A DIMSE node as we talk to it: our AE title, the timeouts, and how many associations at once."""

    def __init__(
        self,
        node: DimseNode,
        *,
        calling_aet: str,
        acse_timeout: float,
        dimse_timeout: float,
        network_timeout: float,
        max_associations: int = 4,
        idle_time: float = 3.0,
    ) -> None:
        self.node = node
        self.calling_aet = calling_aet
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.slots = Slots(max_associations, reserved_for_readers(max_associations))
        """Associations at once; background work (read-ahead) never takes the last quarter."""
        self._idle = _IdleAssociations(idle_time)

    def __str__(self) -> str:
        return f"{self.node.ae_title}@{self.node.host}:{self.node.port}"

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout
        ae.connection_timeout = self.acse_timeout
        ae.maximum_pdu_size = 0  # accept PDUs of any size: fewer, larger reads
        return ae

    async def run(
        self,
        contexts: Sequence[PresentationContext],
        work: Callable[[Association], T],
        *,
        ext_neg: list[Any] | None = None,
        evt_handlers: list[Any] | None = None,
        reuse: str = "",
    ) -> T:
        """Run ``work(association)`` in a worker thread on an association with ``contexts``;
        abort it on cancellation. With ``reuse`` (a name for the contexts), an idle association
        of that name is taken if one is left, and the association is kept for the next call
        instead of being released; one that turns out dead is replaced once."""
        current: dict[str, Association] = {}
        cancelled = threading.Event()

        def attempt(association: Association) -> T:
            current["association"] = association
            if cancelled.is_set():
                raise PacsError("cancelled")
            return work(association)

        def in_thread() -> T:
            association = self._idle.take(reuse) if reuse else None
            try:
                if association is not None:
                    try:
                        return attempt(association)
                    except PacsError:
                        if association.is_established:
                            raise
                        log.debug("idle association with %s was gone; opening a new one", self)
                association = self._associate(contexts, ext_neg, evt_handlers)
                return attempt(association)
            finally:
                if association is not None and association.is_established:
                    if not (reuse and self._idle.keep(reuse, association)):
                        association.release()

        try:
            async with self.slots.slot():
                return await trio.to_thread.run_sync(in_thread, abandon_on_cancel=True)
        except trio.Cancelled:
            cancelled.set()
            if (association := current.get("association")) is not None:
                association.abort()
            raise

    def _associate(self, contexts, ext_neg, evt_handlers) -> Association:  # type: ignore[no-untyped-def]
        association = self.application_entity().associate(
            self.node.host,
            self.node.port,
            contexts=list(contexts),
            ae_title=self.node.ae_title,
            ext_neg=ext_neg,
            evt_handlers=evt_handlers,
        )
        if association.is_rejected:
            raise PacsRefused(f"association with {self} rejected (check calling_aet and the called AE title)")
        if not association.is_established:
            raise PacsError(_why_not_established(association, self))
        return association

    def close(self) -> None:
        """Release the idle associations (at unmount)."""
        self._idle.release_all()


class _IdleAssociations:
    """Established associations kept between operations, by name, for ``max_idle`` seconds, then
    released in a reaper thread (peers close idle associations themselves after a while, Orthanc
    after 5 s by default; an association left to pynetdicom's network timeout is aborted instead,
    with ERROR lines on both sides)."""

    def __init__(self, max_idle: float = 3.0, max_count: int = 2) -> None:
        self.max_idle = max_idle
        self.max_count = max_count
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._idle: list[tuple[str, float, Association]] = []
        self._reaper: threading.Thread | None = None

    def take(self, name: str) -> Association | None:
        with self._lock:
            stale = self._take_stale(time.monotonic())
            found = next((entry for entry in self._idle if entry[0] == name), None)
            if found is not None:
                self._idle.remove(found)
        _release(stale)
        return found[2] if found is not None and found[2].is_established else None

    def keep(self, name: str, association: Association) -> bool:
        with self._lock:
            if sum(entry[0] == name for entry in self._idle) >= self.max_count:
                return False
            self._idle.append((name, time.monotonic(), association))
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="trolleyfs-idle-associations", daemon=True)
                self._reaper.start()
            self._changed.notify()
            return True

    def release_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._changed.notify()
        _release(idle)

    def _take_stale(self, now: float) -> list[tuple[str, float, Association]]:
        stale = [entry for entry in self._idle if now - entry[1] >= self.max_idle]
        self._idle = [entry for entry in self._idle if entry not in stale]
        return stale

    def _reap(self) -> None:
        while True:
            with self._lock:
                while True:
                    if not self._idle:
                        self._reaper = None
                        return
                    now = time.monotonic()
                    if stale := self._take_stale(now):
                        break
                    self._changed.wait(min(entry[1] for entry in self._idle) + self.max_idle - now)
            _release(stale)


def _release(entries: list[tuple[str, float, Association]]) -> None:
    for _, _, association in entries:
        if association.is_established:
            association.release()


def _why_not_established(association: Association, peer: DimsePeer) -> str:
    if association.is_rejected:
        return f"association with {peer} rejected"
    if association.is_aborted:
        return f"association with {peer} aborted while being set up"
    return f"no association with {peer} (connection refused or timed out)"


def status_category(status: Dataset | None, operation: str) -> tuple[int, str]:
    """(code, category) of a DIMSE response status; an empty one (timeout, abort) raises."""
    if not status or "Status" not in status:
        raise PacsError(f"{operation}: no response (timed out, or the association was aborted)")
    code = int(status.Status)
    return code, code_to_category(code)


def failure(status: Dataset, operation: str, code: int) -> PacsError:
    if comment := status.get("ErrorComment", ""):  # it may quote our identifier: only DEBUG carries it
        log.debug("%s: status 0x%04X: %s", operation, code, comment)
    return PacsError(f"{operation} failed with status 0x{code:04X}")


def _readable_character_set(identifier: Dataset) -> bool:
    try:
        charset = identifier.get("SpecificCharacterSet")
    except Exception:  # noqa: BLE001 - pydicom raises many kinds for one badly encoded element
        return False
    if charset is None or isinstance(charset, str):
        return True
    return isinstance(charset, MultiValue) and all(isinstance(value, str) for value in charset)


def record_from_identifier(identifier: Dataset) -> dict[str, Any]:
    """A C-FIND answer to a keyword record like :func:`record_from_dicom_json` makes."""
    record: dict[str, Any] = {}
    if not _readable_character_set(identifier):  # the rest is then read in the default one
        del identifier[_SPECIFIC_CHARACTER_SET]
    for tag in list(identifier.keys()):
        try:
            element = identifier[tag]
            keyword = element.keyword
            if not keyword or keyword in _HEADER_KEYWORDS or element.VR == "SQ":
                continue
            value = element.value
            text = [str(item) for item in value] if isinstance(value, MultiValue) else "" if value is None else str(value)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for one badly encoded element
            log.debug("C-FIND answer: element %s left out, it cannot be decoded: %s", tag, type(exc).__name__)
            continue
        record[keyword] = text
    return record
