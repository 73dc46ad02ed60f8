"""A signal (Ctrl-C, SIGTERM: the CLI turns both into exceptions) that lands while a new
archive's temp file is being set up — after it exists, before its caller holds the object
that would remove it — leaves no temp file (a CLI test sent SIGTERM in that instant and found
one left)."""

from __future__ import annotations

import os

import pytest

from dsbackup.archive import writer as writer_mod
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.storage import local


class Interrupted(BaseException):
    pass


def _raise(*_a, **_k):
    raise Interrupted


@pytest.mark.parametrize("where", ["lock_temp_file", "Writeback"])
def test_the_sink_removes_its_temp_file_when_interrupted(tmp_path, monkeypatch, where):
    monkeypatch.setattr(local, where, _raise)
    with pytest.raises(Interrupted):
        local.LocalSink(tmp_path / "a.tar.gz")
    assert os.listdir(tmp_path) == []


def test_the_writer_removes_its_temp_file_when_interrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "IndexBuilder", _raise)  # before the head's own try
    with pytest.raises(Interrupted):
        ArchiveWriter(tmp_path / "a.tar.gz", manifest={"source": "memory:"})
    assert os.listdir(tmp_path) == []


def test_an_open_failure_removes_nothing_it_did_not_make(tmp_path, monkeypatch):
    """O_EXCL refused: the file there is not ours and stays."""
    monkeypatch.setattr(local, "temp_path_for", lambda p: tmp_path / ".a.tar.gz.tmp-x")
    (tmp_path / ".a.tar.gz.tmp-x").write_bytes(b"someone's")
    with pytest.raises(Exception, match="cannot create temporary file"):
        local.LocalSink(tmp_path / "a.tar.gz")
    assert (tmp_path / ".a.tar.gz.tmp-x").read_bytes() == b"someone's"
