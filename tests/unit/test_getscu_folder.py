"""Which of the files getscu has written are finished: the ones it no longer holds open."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from pydicom import dcmread

from tests.memory_sink import MemorySink
from trolleyfs.backends.dcmtk_get import _store_finished
from trolleyfs.model import SeriesReference
from trolleyfs.testing.data import generate

SERIES = SeriesReference(study_uid="1.2.3", series_uid="1.2.3.4")
HOLD_OPEN = "import sys; f = open(sys.argv[1], 'ab'); f.write(sys.stdin.buffer.read(10)); f.flush(); print('written', flush=True); sys.stdin.read()"


def test_a_file_still_open_in_getscu_is_left_for_later_even_when_it_is_not_the_newest(tmp_path):
    """Two files written within one clock tick have the same mtime (and a coarse or adjusted
    clock can make the older one look newer): the file being written must never be stored cut
    off; before the fix the newest by mtime was left out, whichever that was."""
    finished, writing = tmp_path / "finished", tmp_path / "writing"
    complete = next(generate())
    finished.write_bytes(complete)
    writer = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(writing)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        writer.stdin.write(complete[:10])
        writer.stdin.flush()
        assert writer.stdout.readline() == b"written\n"
        later = writing.stat().st_mtime_ns + 10**9
        os.utime(finished, ns=(later, later))  # the finished one looks newest
        sink = MemorySink()
        assert _store_finished(tmp_path, sink, SERIES, writer.pid) == 1
        assert list(sink.files.values()) == [complete]
        assert [path.name for path in tmp_path.iterdir()] == ["writing"]
    finally:
        writer.kill()
        writer.wait()


def test_once_getscu_has_ended_well_every_file_is_stored(tmp_path):
    files = list(generate())[:3]
    for index, data in enumerate(files):
        (tmp_path / str(index)).write_bytes(data)
    sink = MemorySink()
    assert _store_finished(tmp_path, sink, SERIES, None) == 3
    assert sink.uids == {uid_of(data) for data in files} and not list(tmp_path.iterdir())


def uid_of(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
