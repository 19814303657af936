"""Files whose bytes the filesystem makes itself: the stats, the JSON sidecars, README.txt.

A generated file renders its contents from what is known now (no request); ``stat`` tells the
true size (rendered once per listing, or every time for a volatile file such as the stats),
``open`` takes a snapshot that every read of that handle sees. Opened with direct I/O, so the
kernel never serves an older rendering from its page cache.
"""

from __future__ import annotations

from collections.abc import Callable

from trolleyfs.fs.nodes import File, OpenFile


class GeneratedFile(File):
    render: Callable[[], bytes] = staticmethod(lambda: b"")  # type: ignore[assignment]
    volatile: bool = False
    """Its contents change at any moment (the stats): the kernel may not keep its attributes."""

    _size: int | None = None

    def generated_by(self, render: Callable[[], bytes], *, volatile: bool = False, permanent: bool = False) -> GeneratedFile:
        """Its contents from now on (a directory calls this each time it rebuilds its listing)."""
        self.render = render  # type: ignore[method-assign]
        self.volatile = volatile
        self.permanent = permanent  # type: ignore[misc]
        self._size = None
        return self

    def refresh(self) -> None:
        if self._size is None or self.volatile:  # the contents of a listing change only with it
            self._size = len(self.render())
        self.size = self._size

    @property
    def attr_timeout(self) -> float:
        return 0.0 if self.volatile else self.mount.settings.listing_ttl

    async def open(self) -> OpenFile:
        snapshot = self.render()
        self.size = len(snapshot)
        return OpenFile(self, snapshot=snapshot, direct_io=True)
