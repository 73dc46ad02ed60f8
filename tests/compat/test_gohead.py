"""dsbackup.compat.gohead: a dsbackup archive is told from the Go tool's by its first bytes,
without goformat's imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from go_archives import go_archive, tar_bytes, write_gz

from dsbackup import datasets
from dsbackup.compat import gohead
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def ours(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(200, 1))
    out = tmp_path / "ours.tar.gz"
    BackupManager(BackupConfig(workers=1)).create_backup(f"lmdb:{src}", out)
    return out


def test_a_dsbackup_archive_is_answered_from_its_head_without_goformat(tmp_path):
    path = ours(tmp_path)
    assert gohead.starts_as_dsbackup(path)
    assert gohead.is_go_archive(path) is False
    code = ("import sys, dsbackup\n"
            "print(dsbackup.is_go_archive(sys.argv[1]), 'dsbackup.compat.goformat' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True,
                       text=True, check=True)
    assert r.stdout.split() == ["False", "False"]


def test_other_files_go_to_the_tar_sniff(tmp_path):
    go = tmp_path / "go.tar.gz"
    go_archive(go, [("/a", b"x"), ("/b", b"y")], chunk_size=1)
    assert not gohead.starts_as_dsbackup(go)
    assert gohead.is_go_archive(go)
    # a dsbackup-looking tar in a plain gzip stream is no Go archive, nor ours by its head
    plain = write_gz(tmp_path / "plain.tar.gz", tar_bytes([("dsbackup/manifest.json", b"{}")]))
    assert not gohead.starts_as_dsbackup(plain)
    assert not gohead.is_go_archive(plain)
    short = tmp_path / "short"
    short.write_bytes(b"\x1f\x8b\x08\x04")
    assert not gohead.starts_as_dsbackup(short) and not gohead.is_go_archive(short)
    assert not gohead.is_go_archive(tmp_path / "missing")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert not gohead.starts_as_dsbackup(fifo)  # (an open() would wait for a writer)
    assert not gohead.is_go_archive(fifo)
