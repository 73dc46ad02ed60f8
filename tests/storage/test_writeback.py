"""Early writeback and early syncs of an archive being written (dsbackup.storage.writeback)."""

import os
import time

import pytest

from dsbackup.storage import writeback
from dsbackup.storage.writeback import SYNC_STEP, Writeback


def _write(fd: int, wb: Writeback, total: int, piece: bytes) -> None:
    pos = 0
    while pos < total:
        pos += os.write(fd, piece)
        wb.advance(pos)


def test_early_syncs_run_while_writing_and_close_waits_for_them(tmp_path):
    path = tmp_path / "a"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    wb = Writeback(fd)
    piece = os.urandom(1 << 20)
    _write(fd, wb, 3 * SYNC_STEP, piece)
    wb.close()
    assert wb.syncs >= 1  # at least one of the three requests ran before close
    os.close(fd)
    assert path.stat().st_size == 3 * SYNC_STEP


def test_an_early_sync_error_is_raised_by_close():
    r, w = os.pipe()  # fdatasync of a pipe fails (EINVAL)
    try:
        wb = Writeback(w)
        wb.advance(SYNC_STEP)
        wb._thread.join(10)  # the thread ends at its first failed sync
        assert not wb._thread.is_alive()
        with pytest.raises(OSError):
            wb.close()
        wb.close()  # reported once
    finally:
        os.close(r)
        os.close(w)


def test_small_files_and_disabled_writeback_start_no_thread(tmp_path, monkeypatch):
    fd = os.open(tmp_path / "a", os.O_WRONLY | os.O_CREAT)
    try:
        wb = Writeback(fd)
        wb.advance(SYNC_STEP - 1)
        assert wb._thread is None
        wb.close()
        monkeypatch.setenv("DSBACKUP_NO_WRITEBACK", "1")
        wb = Writeback(fd)
        wb.advance(4 * SYNC_STEP)
        assert wb._thread is None and not wb.enabled
        wb.close()
    finally:
        os.close(fd)


def test_start_writeback_reports_support(tmp_path):
    fd = os.open(tmp_path / "a", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"x" * 8192)
        assert writeback.start_writeback(fd) == (writeback._sync_file_range is not None)
    finally:
        os.close(fd)


def test_a_smaller_sync_step_syncs_sooner(tmp_path, monkeypatch):
    monkeypatch.delenv("DSBACKUP_NO_WRITEBACK", raising=False)
    fd = os.open(tmp_path / "a", os.O_WRONLY | os.O_CREAT)
    try:
        wb = Writeback(fd)
        wb.advance(writeback.SEALING_SYNC_STEP)
        assert wb._thread is None  # below SYNC_STEP: no early sync yet
        wb.close()
        wb = Writeback(fd)
        wb.sync_step = writeback.SEALING_SYNC_STEP  # an encrypted archive's file
        wb.advance(writeback.SEALING_SYNC_STEP)
        assert wb._thread is not None
        for _ in range(1000):  # the thread's sync (close would stop it before it ran)
            if wb.syncs:
                break
            time.sleep(0.01)
        wb.close()
        assert wb.syncs == 1
    finally:
        os.close(fd)
