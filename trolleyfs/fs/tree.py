"""What a path means: the naming rules and the inode table. Knows nothing of FUSE or protocols.

    /patients/<patient>/<study>/<series>/<instance>.dcm
    /.trolleyfs/stats              counters of the running mount, as JSON

Naming rules (docs/semantics.md repeats them for users):

- ``<patient>`` is the PatientID, percent-encoded where a character is unsafe or ambiguous:
  ``%``, ``/``, control characters, the wildcards ``*`` ``?`` ``\\``, and a leading ``.``; an
  empty PatientID is ``%``. The encoding is reversible, so a directory can be looked up by
  PatientID without listing ``/patients`` first.
- ``<study>`` is ``<StudyDate>_<StudyDescription>_<StudyInstanceUID>``,
  ``<series>`` is ``<SeriesNumber>_<Modality>_<SeriesDescription>_<SeriesInstanceUID>``,
  ``<instance>`` is ``<InstanceNumber>_<SOPInstanceUID>.dcm``. Descriptive parts are reduced to
  ``[A-Za-z0-9 +.-]`` and shortened; missing ones are left out. The UID keeps names unique; if two
  entries still end up with one name, later ones (by UID order) get ``~2``, ``~3``...
"""

from __future__ import annotations

import calendar
import enum
import hashlib
import itertools
import re
import stat
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

ROOT_INODE = 1
_PATIENT_SAFE = " !#$&'()+,-.;=@[]^_`{|}~"
_EMPTY_PATIENT_ID = "%"
_UNSAFE_PART = re.compile(r"[^A-Za-z0-9 +.-]+")
_MAX_PART = 48
_MAX_NAME = 240  # bytes; the kernel allows 255 (names here are ASCII)


def patient_dir_name(patient_id: str) -> str:
    if not patient_id:
        return _EMPTY_PATIENT_ID
    # surrogateescape: a PatientID that was not valid UTF-8 keeps its bytes, percent-encoded
    name = quote(patient_id, safe=_PATIENT_SAFE, errors="surrogateescape")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:  # past NAME_MAX: shortened, found by listing only (not reversible)
        digest = hashlib.sha256(patient_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f"{name[:_MAX_NAME - 20]}%~{digest}"  # "%~" is no percent-escape: never reversed
    return name


def patient_id_from_name(name: str) -> str | None:
    """The PatientID a directory name stands for, or None if no PatientID is named so."""
    if name == _EMPTY_PATIENT_ID:
        return ""
    patient_id = unquote(name, errors="surrogateescape") if "%" in name else name
    return patient_id if patient_dir_name(patient_id) == name else None


def _part(value: Any, limit: int = _MAX_PART) -> str:
    text = " ".join(value) if isinstance(value, list) else str(value)
    return _UNSAFE_PART.sub("-", text).strip(" .-")[:limit].strip(" .-")


def _uid_part(uid: str) -> str:
    """A UID as it stands in a name; one that is not a plain UID (a PACS may send anything) gets
    a short hash of its raw value, so the part is never empty and stays distinct."""
    clean = _part(uid, 64)
    if clean == uid:
        return clean
    digest = hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{clean}-{digest}" if clean else digest


def _join(*parts: str) -> str:
    return "_".join(part for part in parts if part)


def study_dir_name(uid: str, attributes: dict[str, Any]) -> str:
    return _join(_part(attributes.get("StudyDate", "")), _part(attributes.get("StudyDescription", "")), _uid_part(uid))


def series_dir_name(uid: str, attributes: dict[str, Any]) -> str:
    number = attributes.get("SeriesNumber", "")
    return _join(
        f"{int(number):03d}" if _is_int(number) else "",
        _part(attributes.get("Modality", "")),
        _part(attributes.get("SeriesDescription", "")),
        _uid_part(uid),
    )


def instance_file_name(uid: str, attributes: dict[str, Any]) -> str:
    number = attributes.get("InstanceNumber", "")
    return _join(f"{int(number):04d}" if _is_int(number) else "", _uid_part(uid)) + ".dcm"


def unique_names(named: list[tuple[str, str]]) -> dict[str, str]:
    """(name, uid) pairs -> {unique name: uid}, disambiguating clashes in UID order."""
    result: dict[str, str] = {}
    for name, uid in sorted(named, key=lambda pair: (pair[0], pair[1])):
        candidate, counter = name, 1
        while candidate in result:
            counter += 1
            stem, dot, suffix = name.rpartition(".") if name.endswith(".dcm") else (name, "", "")
            candidate = f"{stem}~{counter}{dot}{suffix}"
        result[candidate] = uid
    return result


def _is_int(value: Any) -> bool:
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


def study_time(attributes: dict[str, Any]) -> float | None:
    """Seconds since the epoch of a StudyDate (UTC midnight), if it is a valid date."""
    try:
        return float(calendar.timegm(time.strptime(str(attributes.get("StudyDate", "")), "%Y%m%d")))
    except (ValueError, OverflowError):
        return None


class Kind(enum.Enum):
    ROOT = "root"
    PATIENTS = "patients"
    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"
    CONTROL = "control"
    STATS = "stats"

    @property
    def is_dir(self) -> bool:
        return self not in (Kind.INSTANCE, Kind.STATS)


@dataclass(frozen=True)
class NodeKey:
    kind: Kind
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    instance_uid: str = ""


@dataclass
class Node:
    inode: int
    key: NodeKey
    mtime: float
    size: int = 0
    """Of a file: exact once downloaded, before that an estimate (see docs/semantics.md)."""
    size_exact: bool = False
    sop_class_uid: str = ""
    """Of an instance file: its SOP class, as the search told."""
    children: dict[str, Node] | None = field(default=None, repr=False)
    """Of a directory: its entries, built from ``children_answer``."""
    children_answer: weakref.ref[Any] | None = field(default=None, repr=False)
    """The searcher answer ``children`` was built from (weakly: an answer that left the listing
    cache is not kept alive by the tree); another answer, or none, means a rebuild."""

    @property
    def mode(self) -> int:
        return (stat.S_IFDIR | 0o555) if self.key.kind.is_dir else (stat.S_IFREG | 0o444)


class InodeTable:
    """One inode per node, handed out on first sight and kept while the kernel knows it.

    The kernel counts how often it was handed each inode (lookups, listing entries) and forgets
    them under memory pressure; a node whose count drops to zero leaves the table, with its
    listing, so that browsing a large archive does not grow the daemon without bound. A forgotten
    node still held by its parent's listing comes back under the same inode when handed out again.
    """

    _PERMANENT = (Kind.ROOT, Kind.PATIENTS, Kind.CONTROL, Kind.STATS)

    def __init__(self, mount_time: float) -> None:
        self.mount_time = mount_time
        self._by_inode: dict[int, Node] = {}
        self._by_key: dict[NodeKey, Node] = {}
        self._kernel_counts: Counter[int] = Counter()
        self._next_inode = itertools.count(ROOT_INODE)
        self.node_for(NodeKey(Kind.ROOT))

    def __len__(self) -> int:
        return len(self._by_inode)

    def node_for(self, key: NodeKey, mtime: float | None = None) -> Node:
        node = self._by_key.get(key)
        if node is None:
            node = Node(inode=next(self._next_inode), key=key, mtime=mtime or self.mount_time)
            self._by_inode[node.inode] = node
            self._by_key[key] = node
        elif mtime:
            node.mtime = mtime
        return node

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode)

    def handed_to_kernel(self, node: Node) -> None:
        """The kernel was given ``node`` once more (a lookup answer or a listing entry)."""
        self._by_inode.setdefault(node.inode, node)
        self._by_key.setdefault(node.key, node)
        self._kernel_counts[node.inode] += 1

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` of its references to ``inode``."""
        self._kernel_counts[inode] -= count
        if self._kernel_counts[inode] > 0:
            return
        del self._kernel_counts[inode]
        node = self._by_inode.get(inode)
        if node is None or node.key.kind in self._PERMANENT:
            return
        del self._by_inode[inode]
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        node.children = node.children_answer = None
