"""A file made on its first ``open`` (trolleyfs.derived) and kept in the cache under its key: a
preview, a NIfTI conversion, a de-identified instance. Listing and ``stat`` make nothing: until it
is made its size is an estimate (asked again on every ``stat``, like an instance not yet
downloaded), then the true size."""

from __future__ import annotations

from trolleyfs.fs.nodes import File, OpenFile


class DerivedFile(File):
    size_exact = False

    @property
    def uid(self) -> str:
        """Its cache key (what ``release`` hands back to the cache)."""
        raise NotImplementedError

    def estimate(self) -> int:
        """Its size as far as it can be told without making it."""
        raise NotImplementedError

    async def make(self) -> None:
        """Make it and publish it under ``uid`` (in the mount's derived files)."""
        raise NotImplementedError

    def refresh(self) -> None:
        cached = self.mount.derived.peek(self.uid)
        if cached is not None:
            self.size, self.size_exact = cached.size, True
        else:
            self.size, self.size_exact = self.estimate(), False

    @property
    def attr_timeout(self) -> float:
        return self.mount.settings.listing_ttl if self.size_exact else 0.0

    async def open(self) -> OpenFile:
        fd, entry = await self.mount.derived.open(self.uid, self.make)
        self.size, self.size_exact = entry.size, True
        return OpenFile(self, fd=fd)
