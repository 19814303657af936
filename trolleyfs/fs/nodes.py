"""The node types every view is built of, and the inode table that holds what the kernel knows.

A :class:`Directory` knows its entries and how to look up one name; a :class:`File` knows its
size, how to open, and its xattrs. Views (:mod:`trolleyfs.fs.views`) and the study, series and
instance directories they share (:mod:`trolleyfs.fs.dicom`) are subclasses; the core calls only
what is defined here. A node's identity is its ``key``, the path of parts that leads to it, so
the same place keeps its inode while listings are rebuilt.
"""

from __future__ import annotations

import itertools
import stat
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from trolleyfs.derived.store import DerivedFiles
from trolleyfs.errors import NotFound

if TYPE_CHECKING:
    from trolleyfs.cache import Arrival
    from trolleyfs.fs.settings import FsSettings
    from trolleyfs.trolley import Trolley

ROOT_INODE = 1
Key = tuple[str, ...]
N = TypeVar("N", bound="Node")


@dataclass
class OpenFile:
    node: File
    fd: int | None = None
    just_written: bool = False
    """Its pages are in the page cache (published moments ago): read without a thread hop."""
    snapshot: bytes | None = None
    """Contents fixed at open, for generated files."""
    arrival: Arrival | None = None
    """Set when opened while still arriving: reads past what has arrived wait for it."""
    direct_io: bool = False


@dataclass(frozen=True)
class Tree:
    """One of the trees a mount shows the same studies in (the DICOM views at the root, ``/nifti``,
    ``/deid``): the kinds of node its studies, series and instances are, and the attributes their
    names are made of. Every node belongs to the tree of the directory that made it, so one view
    module (``patients``, ``studies``, ...) serves in every tree unchanged."""

    study_dir: type[Directory]
    series_dir: type[Directory]
    instance_file: type[File]
    visible: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda attributes: attributes)
    """The attributes a name may be made of (all of them; under ``/deid`` no identifying one)."""
    visible_uid: Callable[[str], str] = field(default=lambda uid: uid)
    attributes_shown: bool = True
    """Whether its nodes have extended attributes (the original values: none under ``/deid``)."""
    searchable_names: bool = True
    """Whether a name that no listing showed may be looked up by searching for it (under ``/deid``
    a name is a pseudonym: only a listing can tell what it stands for)."""


class Mount:
    """What every node of one mount shares: the trolley, the settings, the inode table, and the
    tree nodes belong to unless made in another."""

    def __init__(self, trolley: Trolley, settings: FsSettings, mount_time: float, tree: Tree) -> None:
        self.trolley = trolley
        self.settings = settings
        self.mount_time = mount_time
        self.tree = tree
        self.derived = DerivedFiles(trolley.cache)
        self.inodes = InodeTable()


class Node:
    is_dir: ClassVar[bool] = False
    permanent: ClassVar[bool] = False
    """Never forgotten (the root and the fixed folders)."""

    def __init__(self, mount: Mount, key: Key) -> None:
        self.mount = mount
        self.key = key
        self.tree = mount.tree
        self.inode = mount.inodes.new_inode()
        self.mtime = mount.mount_time
        self.size = 0

    @property
    def mode(self) -> int:
        return (stat.S_IFDIR | 0o555) if self.is_dir else (stat.S_IFREG | 0o444)

    def refresh(self) -> None:
        """Bring ``size`` as close to the truth as can be known now, without any request."""

    @property
    def attr_timeout(self) -> float:
        return self.mount.settings.listing_ttl

    async def xattrs(self) -> dict[str, bytes]:
        """``user.dicom.<Keyword>`` -> value; never downloads an instance."""
        return {}

    def forgotten(self) -> None:
        """The kernel no longer knows this node: let go of what it holds."""


class Directory(Node):
    is_dir = True

    @classmethod
    def offered(cls, settings: FsSettings) -> bool:
        """Whether a mount with ``settings`` shows this view at all."""
        return True

    def __init__(self, mount: Mount, key: Key) -> None:
        super().__init__(mount, key)
        self.children: dict[str, Node] | None = None
        self._by_part: dict[str, Node] = {}
        """``children`` by the last part of their key, to find them again when rebuilding."""
        self._built_from: weakref.ref[Any] | None = None

    async def entries(self) -> dict[str, Node]:
        raise NotImplementedError

    async def lookup(self, name: str) -> Node:
        entries = await self.entries()
        node = entries.get(name) or self.by_uid(name, entries)
        if node is None:
            raise NotFound(f"no such entry in inode {self.inode}")
        return node

    def by_uid(self, name: str, entries: dict[str, Node]) -> Node | None:
        """An entry reached by its UID rather than its name (whatever the naming template)."""
        return None

    def up_to_date(self, answer: object) -> bool:
        """Whether ``children`` were built from ``answer`` (a searcher answer, held weakly so the
        tree does not keep answers that left the listing cache)."""
        return self.children is not None and self._built_from is not None and self._built_from() is answer

    def built(self, children: dict[str, Node], answer: object | None = None) -> dict[str, Node]:
        self.children = children
        self._by_part = {child.key[-1]: child for child in children.values()}
        self._built_from = weakref.ref(answer) if answer is not None else None
        return children

    def child(self, kind: type[N], part: str) -> N:
        """The node of kind ``kind`` at ``part`` below this directory: the one already there
        (listed before, or known to the kernel) or a new one."""
        key = (*self.key, part)
        node = self.mount.inodes.by_key(key) or self._by_part.get(part)
        if type(node) is not kind:
            node = kind(self.mount, key)
            node.tree = self.tree
        return node  # type: ignore[return-value]

    def forgotten(self) -> None:
        self.children = None
        self._by_part = {}
        self._built_from = None


class TreeRoot(Directory):
    """The folder a tree of its own begins at (``/nifti``, ``/deid``): some views, in that tree."""

    permanent = True

    def tree_and_views(self) -> tuple[Tree, dict[str, type[Directory]]]:
        raise NotImplementedError

    async def entries(self) -> dict[str, Node]:
        if self.children is None:
            self.tree, views = self.tree_and_views()
            self.built({name: self.child(view, name) for name, view in views.items()})
        return self.children  # type: ignore[return-value]


class File(Node):
    size_exact: bool = True

    async def open(self) -> OpenFile:
        raise NotImplementedError


class InodeTable:
    """The nodes the kernel was handed, by inode and by key, kept while the kernel knows them.

    The kernel counts how often it was handed each inode (lookups, listing entries) and forgets
    them under memory pressure; a node whose count drops to zero leaves the table with its
    listing, so that browsing a large archive does not grow the daemon without bound. Nodes of
    a listing the kernel was never handed live only in their directory's listing.
    """

    def __init__(self) -> None:
        self._by_inode: dict[int, Node] = {}
        self._by_key: dict[Key, Node] = {}
        self._kernel_counts: Counter[int] = Counter()
        self._next_inode = itertools.count(ROOT_INODE)

    def __len__(self) -> int:
        return len(self._by_inode)

    def new_inode(self) -> int:
        return next(self._next_inode)

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode)

    def by_key(self, key: Key) -> Node | None:
        return self._by_key.get(key)

    def keep(self, node: Node) -> None:
        self._by_inode[node.inode] = node
        self._by_key[node.key] = node

    def handed_to_kernel(self, node: Node) -> None:
        """The kernel was given ``node`` once more (a lookup answer or a listing entry)."""
        self.keep(node)
        self._kernel_counts[node.inode] += 1

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` of its references to ``inode``."""
        self._kernel_counts[inode] -= count
        if self._kernel_counts[inode] > 0:
            return
        del self._kernel_counts[inode]
        node = self._by_inode.get(inode)
        if node is None or node.permanent:
            return
        del self._by_inode[inode]
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        node.forgotten()
