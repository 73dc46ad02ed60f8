"""LocalSink.commit: the final fsync and the check start at once, an early sync still running
does not hold them up, and its error still stops the archive from being placed."""

import errno
import threading

import pytest

from dsbackup.errors import ArchiveError
from dsbackup.storage import writeback
from dsbackup.storage.local import LocalSink


def _sink_with_early_sync(tmp_path, monkeypatch, fake_fdatasync):
    monkeypatch.delenv("DSBACKUP_NO_WRITEBACK", raising=False)
    monkeypatch.setattr(writeback, "SYNC_STEP", 4096)
    monkeypatch.setattr(writeback.os, "fdatasync", fake_fdatasync)
    sink = LocalSink(tmp_path / "a.dsb")
    sink.write([b"x" * 8192])  # past SYNC_STEP: the early-sync thread is asked for a sync
    return sink


def test_check_runs_while_an_early_sync_is_still_running(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()

    def slow_fdatasync(fd):
        started.set()
        release.wait(10)

    sink = _sink_with_early_sync(tmp_path, monkeypatch, slow_fdatasync)
    assert started.wait(10)
    early = sink._writeback._thread
    seen = []

    def check(tmp):
        seen.append((tmp.stat().st_size, early.is_alive()))
        release.set()  # the early sync ends only now: commit did not wait for it first

    sink.commit(check)
    assert seen == [(8192, True)]
    assert not early.is_alive()
    assert (tmp_path / "a.dsb").read_bytes() == b"x" * 8192


def test_an_early_sync_error_still_stops_the_commit(tmp_path, monkeypatch):
    def failing_fdatasync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    sink = _sink_with_early_sync(tmp_path, monkeypatch, failing_fdatasync)
    sink._writeback._thread.join(10)  # it ends at its failed sync
    checked = []
    with pytest.raises(ArchiveError, match="no space left"):
        sink.commit(checked.append)
    assert checked == [sink.tmp]  # checked meanwhile, then refused
    assert not (tmp_path / "a.dsb").exists()
    sink.abort()
    assert not sink.tmp.exists()
