"""The one errno boundary (trolleyfs.fs.fuse): what a program sees and what the log says when a
call fails. Driven through the pyfuse3 adapter's handlers, without a kernel mount."""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3
import pytest

from tests.unit.helpers import all_files, filesystem_over, walk
from trolleyfs.fs.fuse import FuseOperations
from trolleyfs.fs.nodes import ROOT_INODE


async def _errno_of(call) -> int:
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await call
    return raised.value.errno


async def test_opening_a_directory_is_eisdir_and_listing_a_file_is_enotdir(pacs, tmp_path):
    async with filesystem_over(pacs, tmp_path) as fs:
        operations = FuseOperations(fs)
        file = next(iter((await all_files(fs)).values()))
        assert await _errno_of(operations.open(ROOT_INODE, os.O_RDONLY, None)) == errno.EISDIR
        assert await _errno_of(operations.opendir(file.inode, None)) == errno.ENOTDIR
        assert await _errno_of(operations.lookup(file.inode, b"x", None)) == errno.ENOTDIR


async def test_an_internal_oserror_is_eio_with_a_log_line_not_its_own_errno(pacs, tmp_path, monkeypatch, caplog):
    async with filesystem_over(pacs, tmp_path) as fs:
        operations = FuseOperations(fs)
        file = next(iter((await all_files(fs)).values()))

        def broken_cache(uid):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "objects"))

        monkeypatch.setattr(fs.trolley.cache, "open_for_reading", broken_cache)
        with caplog.at_level(logging.WARNING, logger="trolleyfs"):
            assert await _errno_of(operations.open(file.inode, os.O_RDONLY, None)) == errno.EIO
        assert "internal error" in caplog.text and "Permission denied" in caplog.text


async def test_a_pacs_that_is_down_is_logged_once_per_outage(pacs, tmp_path, caplog):
    async with filesystem_over(pacs, tmp_path, retries=0, listing_ttl=0) as fs:
        operations = FuseOperations(fs)
        patients = await walk(fs, "/patients")
        caplog.set_level(logging.DEBUG, logger="trolleyfs")
        pacs.faults.add("qido", "status", status=503)
        for _ in range(5):
            assert await _errno_of(operations.opendir(patients.inode, None)) == errno.EIO
        first_outage = [r for r in caplog.records if r.levelno >= logging.WARNING and "opendir" in r.getMessage()]
        assert len(first_outage) == 1
        pacs.faults.clear()
        await operations.releasedir(await operations.opendir(patients.inode, None))
        assert "the PACS answers again (5 failed requests" in caplog.text
        caplog.clear()
        pacs.faults.add("qido", "status", status=503)
        for _ in range(3):
            assert await _errno_of(operations.opendir(patients.inode, None)) == errno.EIO
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1  # a new outage
