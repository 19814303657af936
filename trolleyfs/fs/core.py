"""The filesystem's operations as plain async methods over the trolley. Never imports pyfuse3.

Directories are answers of the searcher (through the trolley's listing cache); instance files
are downloaded into the disk cache on ``open``, never on ``lookup``, ``getattr`` or ``readdir``.
Every error is raised as a :class:`~trolleyfs.errors.TrolleyError` carrying its errno; the
adapter decides nothing.
"""

from __future__ import annotations

import errno
import itertools
from collections import Counter
import json
import logging
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any

import trio

from trolleyfs.errors import CacheError, NotFound, ReadOnly
from trolleyfs.fs.tree import (
    InodeTable,
    Kind,
    Node,
    NodeKey,
    instance_file_name,
    patient_dir_name,
    patient_id_from_name,
    series_dir_name,
    study_dir_name,
    study_time,
    unique_names,
)
from trolleyfs.model import Instance, InstanceReference, Query, QueryLevel, SeriesReference, Study
from trolleyfs.trolley import Trolley

log = logging.getLogger(__name__)

_read_limiter = trio.CapacityLimiter(8)
_HEADER_ALLOWANCE = 4096
_STATIC_CHILDREN = {
    Kind.ROOT: {"patients": NodeKey(Kind.PATIENTS), ".trolleyfs": NodeKey(Kind.CONTROL)},
    Kind.CONTROL: {"stats": NodeKey(Kind.STATS)},
}


@dataclass
class OpenFile:
    node: Node
    fd: int | None = None
    just_written: bool = False
    """Its pages are in the page cache (published moments ago): read without a thread hop."""
    snapshot: bytes | None = None
    """Contents fixed at open, for generated files (stats)."""


class FileSystem:
    def __init__(
        self,
        trolley: Trolley,
        *,
        root_listing_limit: int = 1000,
        listing_ttl: float = 60.0,
        readahead_max: int = 512 * 1024**2,
        listing_readahead: int = 16,
        backend_names: tuple[str, str] = ("", ""),
    ) -> None:
        self.trolley = trolley
        self.backend_names = backend_names
        """(searcher, downloader), for the stats."""
        self.errors: Counter[str] = Counter()
        self.lookups = 0
        """Names the kernel asked about (it caches answers, found or not, for listing_ttl)."""
        self.readahead_max = readahead_max
        self.listing_readahead = listing_readahead
        self.root_listing_limit = root_listing_limit
        self.listing_ttl = listing_ttl
        self.inodes = InodeTable(mount_time=time.time())
        self._handles = itertools.count(1)
        self._open_files: dict[int, OpenFile] = {}
        self._open_dirs: dict[int, list[tuple[str, Node]]] = {}

    # --- looking things up -------------------------------------------------------------------

    def getattr(self, inode: int) -> Node:
        node = self.inodes.get(inode)
        if node is None:
            raise NotFound(f"no inode {inode}")
        return self._refreshed(node)

    def _refreshed(self, node: Node) -> Node:
        """``node`` with a size that is as true as can be known now."""
        if node.key.kind is Kind.STATS:
            node.size = len(self._render_stats())
        elif node.key.kind is Kind.INSTANCE and not node.size_exact:
            cached = self.trolley.cache.peek(node.key.instance_uid)
            if cached is not None:
                node.size, node.size_exact = cached.size, True
        return node

    def attr_timeout(self, node: Node) -> float:
        """How long the kernel may keep a node's attributes: files whose size may still change
        (an estimate, the stats file) are asked again every time."""
        if node.key.kind is Kind.STATS or (node.key.kind is Kind.INSTANCE and not node.size_exact):
            return 0.0
        return self.listing_ttl

    async def lookup(self, parent_inode: int, name: str) -> Node:
        self.lookups += 1
        parent = self.getattr(parent_inode)
        if parent.key.kind is Kind.PATIENTS:
            return await self._lookup_patient(name)
        children = await self._children(parent)
        if name not in children:
            raise NotFound(f"{name!r} not in inode {parent_inode}")
        return self._refreshed(children[name])

    async def _lookup_patient(self, name: str) -> Node:
        patient_id = patient_id_from_name(name)
        if patient_id is None:  # a shortened name of an overlong PatientID: only listing knows it
            listed = await self._children(self.inodes.node_for(NodeKey(Kind.PATIENTS)))
            if name in listed:
                return listed[name]
            raise NotFound(f"{name!r} does not name a PatientID")
        node = self.inodes.node_for(NodeKey(Kind.PATIENT, patient_id=patient_id))
        if not await self._children(node):
            raise NotFound(f"no studies for PatientID {patient_id!r}")
        return node

    async def _children(self, node: Node) -> dict[str, Node]:
        """A directory's entries, rebuilt only when the searcher's (cached) answer changes."""
        key = node.key
        if key.kind in _STATIC_CHILDREN:
            return {name: self.inodes.node_for(child) for name, child in _STATIC_CHILDREN[key.kind].items()}
        query = _listing_query(key, self.root_listing_limit)
        if query is None:
            return {}
        answer = await self.trolley.find_studies(query)
        if node.children is None or node.children_answer is None or node.children_answer() is not answer:
            node.children = self._entries(key, answer)
            node.children_answer = weakref.ref(answer)
            if key.kind is Kind.STUDY and 0 < len(node.children) <= self.listing_readahead:
                series_queries = [_listing_query(child.key, 0) for child in node.children.values()]
                self.trolley.prefetch_searches([query for query in series_queries if query is not None])
        return node.children

    def _entries(self, key: NodeKey, answer: list[Study]) -> dict[str, Node]:
        if key.kind is Kind.PATIENTS:
            return self._patient_entries(answer)
        if key.kind is Kind.PATIENT:
            return self._study_entries(key, [s for s in answer if _text(s.attributes.get("PatientID")) == key.patient_id])
        study = _only_study(answer, key.study_uid)
        if study is None:
            return {}
        if key.kind is Kind.STUDY:
            return self._series_entries(key, study)
        series = next((s for s in study.series if s.uid == key.series_uid), None)
        return self._instance_entries(key, study, series.instances if series else [])

    def _patient_entries(self, studies: list[Study]) -> dict[str, Node]:
        patient_ids = sorted({_text(study.attributes.get("PatientID")) for study in studies})
        return {
            patient_dir_name(pid): self.inodes.node_for(NodeKey(Kind.PATIENT, patient_id=pid)) for pid in patient_ids
        }

    def _study_entries(self, key: NodeKey, studies: list[Study]) -> dict[str, Node]:
        by_uid = {study.uid: study for study in studies}
        names = unique_names([(study_dir_name(study.uid, study.attributes), study.uid) for study in studies])
        return {
            name: self.inodes.node_for(_child(key, Kind.STUDY, study_uid=uid), study_time(by_uid[uid].attributes))
            for name, uid in names.items()
        }

    def _series_entries(self, key: NodeKey, study: Study) -> dict[str, Node]:
        mtime = study_time(study.attributes)
        names = unique_names([(series_dir_name(s.uid, s.attributes), s.uid) for s in study.series])
        return {name: self.inodes.node_for(_child(key, Kind.SERIES, series_uid=uid), mtime) for name, uid in names.items()}

    def _instance_entries(self, key: NodeKey, study: Study, instances: list[Instance]) -> dict[str, Node]:
        by_uid = {instance.uid: instance for instance in instances}
        names = unique_names([(instance_file_name(i.uid, i.attributes), i.uid) for i in instances])
        mtime = study_time(study.attributes)
        children = {}
        for name, uid in names.items():
            node = self.inodes.node_for(_child(key, Kind.INSTANCE, instance_uid=uid), mtime)
            attributes = by_uid[uid].attributes
            node.sop_class_uid = _text(attributes.get("SOPClassUID"))
            if not node.size_exact:
                node.size = _estimated_size(attributes)
            children[name] = self._refreshed(node)
        return children

    # --- directories ---------------------------------------------------------------------------

    async def opendir(self, inode: int) -> int:
        node = self.getattr(inode)
        if not node.key.kind.is_dir:
            raise NotFound(f"inode {inode} is not a directory")
        handle = next(self._handles)
        self._open_dirs[handle] = sorted((await self._children(node)).items())
        return handle

    def readdir(self, handle: int, start: int) -> list[tuple[str, Node, int]]:
        """Entries from position ``start`` of the listing taken at opendir, with next positions."""
        entries = self._open_dirs.get(handle, [])
        return [(name, node, index + 1) for index, (name, node) in enumerate(entries) if index >= start]

    def releasedir(self, handle: int) -> None:
        self._open_dirs.pop(handle, None)

    def handed_to_kernel(self, node: Node) -> None:
        """Count a node the kernel was given (see ``InodeTable``); the adapter calls this."""
        self.inodes.handed_to_kernel(node)

    def forget(self, inode: int, count: int) -> None:
        self.inodes.forget(inode, count)

    # --- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, writable: bool) -> tuple[int, bool]:
        """Open a file for reading; returns (handle, direct_io). Instance files are downloaded
        here, so that fstat right after open reports their true size."""
        if writable:
            raise ReadOnly("trolleyfs is read-only")
        node = self.getattr(inode)
        handle = next(self._handles)
        if node.key.kind is Kind.STATS:
            self._open_files[handle] = OpenFile(node, snapshot=self._render_stats())
            return handle, True
        if node.key.kind is not Kind.INSTANCE:
            raise NotFound(f"inode {inode} is not a file")
        key = node.key
        opened = self.trolley.open_cached(key.instance_uid)
        if opened is None:
            reference = InstanceReference(
                study_uid=key.study_uid,
                series_uid=key.series_uid,
                instance_uid=key.instance_uid,
                sop_class_uid=node.sop_class_uid,
            )
            downloaded = await self.trolley.instance_file(reference)
            self._maybe_read_ahead(key, downloaded.size)
            opened = self.trolley.cache.open_for_reading(key.instance_uid)
            if opened is None:
                raise CacheError(f"{key.instance_uid} left the cache as soon as it was downloaded")
        fd, cached = opened
        node.size, node.size_exact = cached.size, True
        self._open_files[handle] = OpenFile(node, fd=fd, just_written=self.trolley.cache.just_written(key.instance_uid))
        return handle, False

    def _maybe_read_ahead(self, key: NodeKey, file_size: int) -> None:
        """After a file had to be downloaded, fetch the rest of its series in the background when
        the series (as estimated from its listing) fits within ``readahead_max``."""
        series = self.inodes.node_for(_child(key, Kind.SERIES, series_uid=key.series_uid))
        siblings = list((series.children or {}).values())
        estimate = sum(node.size or file_size for node in siblings)
        if len(siblings) > 1 and estimate <= self.readahead_max:
            sop_classes = tuple(sorted({node.sop_class_uid for node in siblings if node.sop_class_uid}))
            self.trolley.read_ahead(
                SeriesReference(study_uid=key.study_uid, series_uid=key.series_uid, sop_class_uids=sop_classes)
            )

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        open_file = self._open_files[handle]
        if open_file.snapshot is not None:
            return open_file.snapshot[offset : offset + size]
        if open_file.just_written:
            return os.pread(open_file.fd, size, offset)
        return await trio.to_thread.run_sync(os.pread, open_file.fd, size, offset, limiter=_read_limiter)

    def release(self, handle: int) -> None:
        open_file = self._open_files.pop(handle, None)
        if open_file is None or open_file.fd is None:
            return
        self.trolley.cache.close_for_reading(open_file.node.key.instance_uid, open_file.fd)

    def refuse_change(self, what: str) -> None:
        raise ReadOnly(f"{what}: trolleyfs is read-only")

    # --- the stats file ------------------------------------------------------------------------

    def count_error(self, errno_value: int) -> None:
        """Note an error returned to a program (ENOENT, a plain "no such name", is not one)."""
        if errno_value != errno.ENOENT:
            self.errors[errno.errorcode.get(errno_value, str(errno_value))] += 1

    def stats(self) -> dict[str, Any]:
        cache = self.trolley.cache
        return {
            **dict(self.trolley.stats),
            "searcher": self.backend_names[0],
            "downloader": self.backend_names[1],
            "downloads_in_flight": self.trolley.downloads_in_flight,
            "lookups": self.lookups,
            "inodes": len(self.inodes),
            "errors": dict(self.errors),
            "cache_files": len(cache),
            "cache_bytes": cache.total_bytes,
            "cache_max_bytes": cache.max_bytes,
            "open_files": len(self._open_files),
        }

    def _render_stats(self) -> bytes:
        return (json.dumps(self.stats(), indent=2, sort_keys=True) + "\n").encode()


def _child(parent: NodeKey, kind: Kind, **uids: str) -> NodeKey:
    return NodeKey(
        kind,
        patient_id=parent.patient_id,
        study_uid=uids.get("study_uid", parent.study_uid),
        series_uid=uids.get("series_uid", parent.series_uid),
        instance_uid=uids.get("instance_uid", ""),
    )


def _listing_query(key: NodeKey, root_listing_limit: int) -> Query | None:
    """The searcher query whose answer lists a directory; None for one that lists nothing."""
    if key.kind is Kind.PATIENTS:
        return Query(limit=root_listing_limit) if root_listing_limit else None
    if key.kind is Kind.PATIENT:
        return Query(PatientID=key.patient_id)
    if key.kind is Kind.STUDY:
        return Query(StudyInstanceUID=key.study_uid, query_level=QueryLevel.SERIES)
    if key.kind is Kind.SERIES:
        return Query(
            StudyInstanceUID=key.study_uid, SeriesInstanceUID=key.series_uid, query_level=QueryLevel.INSTANCE
        )
    return None


def _only_study(studies: list[Study], uid: str) -> Study | None:
    return next((study for study in studies if study.uid == uid), None)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(map(str, value))
    return "" if value is None else str(value)


def _estimated_size(attributes: dict[str, Any]) -> int:
    """Pixel bytes plus a header allowance, from what the search told; 0 when it told nothing."""
    try:
        rows, columns, bits = (int(attributes[name]) for name in ("Rows", "Columns", "BitsAllocated"))
    except (KeyError, TypeError, ValueError):
        return 0
    samples = _int_or(attributes.get("SamplesPerPixel"), 1)
    frames = _int_or(attributes.get("NumberOfFrames"), 1)
    return rows * columns * samples * frames * ((bits + 7) // 8) + _HEADER_ALLOWANCE


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
