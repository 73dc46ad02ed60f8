"""The CLI as a subprocess: backup, verify, inspect, ls, restore; exit codes and messages."""

from __future__ import annotations

import json
import os

import pytest

from dsbackup import datasets
from dsbackup.datastores import open_datastore


@pytest.fixture
def lmdb_source(tmp_path):
    recs = sorted([(b"/blocks/K%04d" % i, os.urandom(3000)) for i in range(300)]
                  + [(b"/pins/%03d" % i, b"pin") for i in range(20)])
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), iter(recs))
    return src, recs


def test_backup_verify_inspect_ls_restore(tmp_path, run_cli, lmdb_source):
    src, recs = lmdb_source
    archive = tmp_path / "a.tar.gz"
    r = run_cli("backup", f"lmdb:{src}", archive, "--json", "--chunk-size", "10",
                "--include-metadata", "--exclude", "/pins/01*")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["schema"] == 1 and out["ok"] and out["command"] == "backup"
    assert out["backup"]["total_keys"] == len(recs) - 10
    assert out["backup"]["statistics"]["skipped_keys"] == 10

    r = run_cli("verify", archive)
    assert r.returncode == 0 and "OK" in r.stderr

    r = run_cli("inspect", archive, "--json")
    info = json.loads(r.stdout)["backup"]
    assert info["fingerprint"] == out["backup"]["fingerprint"]

    r = run_cli("ls", archive, "--prefix", "/pins")
    assert r.returncode == 0
    assert r.stdout.split() == [k.decode() for k, _ in recs
                                if k.startswith(b"/pins/") and not k.startswith(b"/pins/01")]

    r = run_cli("restore", archive, f"lmdb:{tmp_path / 'dst'}", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restore"]["records_written"] == len(recs) - 10
    with open_datastore(f"lmdb:{tmp_path / 'dst'}", readonly=True) as ds:
        got = [k for b, _ in ds.scan_batches() for k in b]
    assert got == [k for k, _ in recs if not k.startswith(b"/pins/01")]


def test_verify_reports_the_damaged_chunk_with_exit_3(tmp_path, run_cli, lmdb_source):
    src, _ = lmdb_source
    archive = tmp_path / "a.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", archive, "--chunk-size", "10").returncode == 0
    from dsbackup.archive.reader import ArchiveReader
    with ArchiveReader(archive) as r:
        e = r.entry(3)
    with open(archive, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    r = run_cli("verify", archive)
    assert r.returncode == 3
    assert "chunk 3" in r.stderr
    assert e.first_key.decode() in r.stderr
    r = run_cli("verify", archive, "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["bad_chunks"] == [3]
    r = run_cli("restore", archive, f"lmdb:{tmp_path / 'dst'}")
    assert r.returncode == 3 and "chunk 3" in r.stderr


def test_errors_name_the_culprit(tmp_path, run_cli):
    r = run_cli("backup", f"lmdb:{tmp_path / 'missing'}", tmp_path / "a.tar.gz")
    assert r.returncode == 2 and "missing" in r.stderr
    assert not (tmp_path / "a.tar.gz").exists()
    r = run_cli("verify", tmp_path / "nope.tar.gz")
    assert r.returncode in (2, 3) and "nope.tar.gz" in r.stderr
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all" * 100)
    r = run_cli("restore", tmp_path / "junk.tar.gz", f"lmdb:{tmp_path / 'x'}")
    assert r.returncode in (2, 3) and "junk.tar.gz" in r.stderr
    r = run_cli("backup", "memory:", tmp_path / "no-such-dir" / "a.tar.gz")
    assert r.returncode == 2 and "no-such-dir" in r.stderr


def test_restore_into_non_empty_target_is_refused(tmp_path, run_cli, lmdb_source):
    src, _ = lmdb_source
    archive = tmp_path / "a.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", archive).returncode == 0
    r = run_cli("restore", archive, f"lmdb:{src}")
    assert r.returncode == 2 and "not empty" in r.stderr
    r = run_cli("restore", archive, f"lmdb:{src}", "--skip-existing", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["restore"]["records_written"] == 0


def test_version_and_help(run_cli):
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("dsbackup ")
    r = run_cli("--help")
    for cmd in ("backup", "restore", "verify", "inspect", "ls"):
        assert cmd in r.stdout
