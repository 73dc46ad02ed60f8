"""BackupConfig refuses values no backup could run with, as a ConfigError (exit 2)."""

from __future__ import annotations

import pytest

from dsbackup.engine.config import MAX_CHUNK_SIZE, MAX_WORKERS, BackupConfig
from dsbackup.errors import ConfigError


@pytest.mark.parametrize("kw", [
    {"chunk_size": 0}, {"chunk_size": MAX_CHUNK_SIZE + 1}, {"chunk_size": 10 ** 20},
    {"timeout": 0}, {"timeout": -1.0}, {"timeout": float("nan")}, {"timeout": float("inf")},
    {"timeout": 1e300}, {"timeout": "60"}, {"workers": 0}, {"compression_level": 12},
    {"chunk_max_bytes": 10 ** 20}, {"workers": MAX_WORKERS + 1}, {"workers": 10 ** 20},
    {"workers": True}, {"skip_foreign": "no"}, {"trust_parent": "false"},
    {"verify_integrity": "false"}, {"include_metadata": 1}, {"trust_content_keys": None},
], ids=repr)
def test_refused(kw):
    with pytest.raises(ConfigError):
        BackupConfig(**kw)


@pytest.mark.parametrize("kw", [{"chunk_size": 1}, {"chunk_size": MAX_CHUNK_SIZE},
                                {"timeout": 0.5}, {"timeout": 86400 * 365},
                                {"workers": MAX_WORKERS}])
def test_accepted(kw):
    BackupConfig(**kw)


def test_workers_past_the_limit_are_refused_at_the_command_line(tmp_path, run_cli):
    # --workers 99999999 forked scan processes until "[Errno 24] Too many open files"
    # (LMDB: MDB_READERS_FULL past ~125); verify/restore/consolidate took it too
    from dsbackup import datasets

    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k", b"v")]))
    r = run_cli("backup", f"lmdb:{tmp_path / 's'}", tmp_path / "a.tar.gz", "--workers", "1")
    assert r.returncode == 0, r.stderr
    for argv in (["backup", f"lmdb:{tmp_path / 's'}", tmp_path / "b.tar.gz"],
                 ["verify", tmp_path / "a.tar.gz"],
                 ["restore", tmp_path / "a.tar.gz", f"lmdb:{tmp_path / 'r'}"],
                 ["consolidate", tmp_path / "a.tar.gz", tmp_path / "c.tar.gz"]):
        r = run_cli(*argv, "--workers", "99999999")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip() == (f"dsbackup: error: workers must be a positive integer "
                                    f"(1 to {MAX_WORKERS}), got 99999999"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "s"]


def test_an_lmdb_scan_takes_at_most_64_processes(tmp_path, run_cli):
    # each scan process holds a slot of the store's 126-slot reader table: --workers 200
    # (or the default on a machine with that many CPUs) failed with MDB_READERS_FULL
    import os

    from dsbackup import datasets
    from dsbackup.pipeline.scanchoice import PARALLEL_MIN_BYTES

    n = PARALLEL_MIN_BYTES // 4096 + 64  # a store a parallel scan is used for
    datasets.write_lmdb(str(tmp_path / "s"), ((b"/k%06d" % i, os.urandom(4096))
                                              for i in range(n)))
    r = run_cli("backup", f"lmdb:{tmp_path / 's'}", tmp_path / "a.tar.gz", "--workers", "200",
                "--json")
    assert r.returncode == 0, r.stderr
    assert "MDB_READERS_FULL" not in r.stderr
    assert run_cli("verify", "--quick", tmp_path / "a.tar.gz").returncode == 0
