"""An InstanceSink that keeps what it is given in memory, for tests of a single backend."""

from __future__ import annotations

import io
from contextlib import asynccontextmanager

import pydicom


class MemorySink:
    def __init__(self) -> None:
        self.files: dict[str | None, bytes] = {}
        """What arrived, by the instance UID the backend said it expected (None when it named a
        study or series)."""
        self.uids: set[str] = set()
        """The SOPInstanceUIDs of the instances that arrived (when they are DICOM)."""

    @asynccontextmanager
    async def receive(self, expected=None):
        chunks: list[bytes] = []

        class Writer:
            async def write(self, chunk: bytes) -> None:
                chunks.append(chunk)

        yield Writer()
        self._keep(expected, b"".join(chunks))

    def open_part(self, expected, size):
        """The thread-side writer HTTP downloaders use."""
        sink, received = self, bytearray()

        class Part:
            def write(self, data) -> None:
                received.extend(data)

            def end(self) -> None:
                sink._keep(expected, bytes(received))

            def abort(self) -> None:
                received.clear()

        return Part()

    def _keep(self, expected, data: bytes) -> None:
        self.files[getattr(expected, "instance_uid", None)] = data
        if data[128:132] == b"DICM":
            self.uids.add(str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID))
