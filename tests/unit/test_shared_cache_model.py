"""A hypothesis state machine: two daemons' shared caches over one directory, publishing,
opening, closing, evicting and losing entries in random order, against a model of what the
directory must hold. Whatever the order, an open file reads whole and right, an entry one cache
has open is never evicted by the other, and a published entry is found by both."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.unit.test_cache import FILES, put, uid
from trolleyfs.shared_cache import SharedCache

UIDS = [uid(data) for data in FILES]
KEYS = {hashlib.sha256(u.encode()).hexdigest(): index for index, u in enumerate(UIDS)}
CACHES = st.integers(0, 1)
INSTANCES = st.integers(0, len(FILES) - 1)


class TwoCachesOneDirectory(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.root = Path(self.directory.name)
        self.clock = trio.testing.MockClock()
        self.caches = [self.run(SharedCache.open_shared, self.root, "ns", 10**9) for _ in range(2)]
        self.published: set[int] = set()
        """The model: instances whose entry the directory holds."""
        self.opened: list[tuple[int, int, int]] = []
        """(cache, instance, fd) of the files open now."""

    def run(self, function, *args):  # noqa: ANN001, ANN201
        return trio.run(function, *args, clock=self.clock)

    def teardown(self) -> None:
        for cache, instance, fd in self.opened:
            self.caches[cache].close_for_reading(UIDS[instance], fd)
        self.directory.cleanup()

    @rule(cache=CACHES, instance=INSTANCES)
    def fetch(self, cache: int, instance: int) -> None:
        async def fetch() -> bool:
            async with self.caches[cache].fetching(UIDS[instance]) as needed:
                if needed:
                    await put(self.caches[cache], FILES[instance])
                return needed

        needed = self.run(fetch)
        assert needed == (instance not in self.published)
        self.published.add(instance)

    @rule(cache=CACHES, instance=INSTANCES)
    def open(self, cache: int, instance: int) -> None:
        opened = self.run(self.caches[cache].open_for_reading, UIDS[instance])
        assert (opened is not None) == (instance in self.published)
        if opened is not None:
            self.opened.append((cache, instance, opened[0]))

    @precondition(lambda self: self.opened)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        cache, instance, fd = self.opened.pop(data.draw(st.integers(0, len(self.opened) - 1)))
        self.caches[cache].close_for_reading(UIDS[instance], fd)

    @rule(cache=CACHES)
    def evict_everything_it_can(self, cache: int) -> None:
        self.run(self.caches[cache].clear)
        self.published &= {instance for _, instance, _ in self.opened}

    @rule(cache=CACHES, size=st.integers(0, 3))
    def evict_down_to(self, cache: int, size: int) -> None:
        self.caches[cache].max_bytes = size * len(FILES[0])
        self.run(self.caches[cache]._evict)
        self.caches[cache].max_bytes = 10**9
        kept = {KEYS[path.name.split(".")[0]] for path in self.entries()}
        open_and_there = {instance for _, instance, _ in self.opened} & self.published
        assert open_and_there <= kept  # never evicted while open
        assert len(kept) <= max(size, len(open_and_there))
        self.published = kept

    @precondition(lambda self: self.published)
    @rule(data=st.data())
    def lost_behind_its_back(self, data: st.DataObject) -> None:
        """Deleted by someone who follows no protocol (an administrator's rm)."""
        instance = data.draw(st.sampled_from(sorted(self.published)))
        for path in self.entries():
            if KEYS[path.name.split(".")[0]] == instance:
                path.unlink()
        self.published.discard(instance)

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("shared-v1/ns/objects/*/*.dcm"))

    @invariant()
    def the_directory_holds_the_model_and_every_entry_is_whole(self) -> None:
        held = {}
        for path in self.entries():
            held[KEYS[path.name.split(".")[0]]] = path.read_bytes()
        assert set(held) == self.published
        for instance, data in held.items():
            assert data == FILES[instance]
        assert not list(self.root.glob("shared-v1/ns/tmp/*"))

    @invariant()
    def every_open_file_reads_whole(self) -> None:
        for _, instance, fd in self.opened:
            assert os.pread(fd, len(FILES[instance]) + 1, 0) == FILES[instance]


TwoCachesOneDirectory.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_two_caches_over_one_directory = TwoCachesOneDirectory.TestCase
