"""The small Protocols every backend implements, and where downloaded instances go.

A :class:`Searcher` answers a :class:`~trolleyfs.model.Query` with a Study tree. A
:class:`Downloader` fetches what a reference names and hands each instance, as a stream of byte
chunks, to an :class:`InstanceSink` (in production the disk cache), never holding a whole
instance or series in memory.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from trolleyfs.model import InstanceReference, Query, Reference, Studies


class Searcher(Protocol):
    async def find_studies(self, query: Query) -> Studies:
        """Studies matching ``query``, filled with series and instances down to its level."""
        ...


class InstanceWriter(Protocol):
    async def write(self, chunk: bytes) -> None: ...


class PartWriter(Protocol):
    """One instance being received, driven from the worker thread that reads its bytes."""

    def write(self, data: memoryview) -> None:
        """The next bytes; ``data`` is only valid during the call."""
        ...

    def end(self) -> None:
        """All bytes are in: identify and publish it (the thread waits until it is)."""
        ...

    def abort(self) -> None:
        """The transfer failed: discard it; readers waiting for it get EIO."""
        ...


class InstanceSink(Protocol):
    def receive(self, expected: Reference | None = None) -> AbstractAsyncContextManager[InstanceWriter]:
        """A writer for one Part-10 file of what ``expected`` names (the reference the
        downloader was asked for, or the one instance it is known to be). Leaving the block
        normally publishes it, unless ``expected`` does not admit it (UnrequestedInstance: a
        PACS cannot plant a file under a UID it was not asked for); an exception discards it."""
        ...

    def open_part(self, expected: Reference, size: int | None) -> PartWriter:
        """From a worker thread (the one reading an HTTP body): a writer for one Part-10 file of
        what ``expected`` names. ``size``, when the answer says it (a Content-Length), lets readers
        open the file and read what has arrived while the rest is still coming."""
        ...


async def store_bytes(sink: InstanceSink, expected: Reference, data: bytes) -> None:
    """Put one instance already whole in memory into ``sink``."""
    async with sink.receive(expected) as writer:
        await writer.write(data)


class Downloader(Protocol):
    async def fetch(self, reference: Reference, sink: InstanceSink) -> None:
        """Put every instance ``reference`` names into ``sink``. Raises NeedsInstances when this
        downloader can only fetch single instances and ``reference`` names a study or series."""
        ...


@runtime_checkable
class Renderer(Protocol):
    """A downloader whose PACS also renders an instance as an image (WADO-RS ``/rendered``), so a
    preview costs one small request instead of the instance."""

    async def rendered(self, reference: InstanceReference, size: int) -> bytes:
        """The instance as a PNG or JPEG image fitting ``size`` × ``size`` (roughly: servers may
        ignore the viewport), windowed by the server. Raises PacsError when it cannot."""
        ...
