"""Archives are never replaced silently (issue #20 item 17): backup and consolidate refuse an
existing output path unless --overwrite (API: overwrite=True), and even then refuse an archive
that other archives use as their parent; consolidate never writes over its input or chain."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def chain(tmp_path: Path, chain_made):
    """full <- i1 <- i2 in d/, each after a change to the store (a copy of chain_made's)."""
    made = chain_made
    return (shutil.copytree(made / "src", tmp_path / "src"),
            shutil.copytree(made / "d", tmp_path / "d"))


@pytest.fixture(scope="module")
def chain_made(tmp_path_factory):
    """The store and its chain, made once per module with the CLI (as conftest's run_cli)."""
    tmp_path = tmp_path_factory.mktemp("chain")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("COLUMNS", None)

    def run_cli(*args):
        return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=300)

    src = tmp_path / "src"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(1500)))
    d = tmp_path / "d"
    d.mkdir()
    r = run_cli("backup", f"lmdb:{src}", d / "full.tar.gz", "--chunk-size", "32")
    assert r.returncode == 0, r.stderr
    prev = "full.tar.gz"
    for n in ("i1", "i2"):
        with open_datastore(f"lmdb:{src}") as ds:
            ds.put(b"/r/%05d" % (7 if n == "i1" else 900), n.encode())
        r = run_cli("backup", f"lmdb:{src}", d / f"{n}.tar.gz", "--parent", d / prev)
        assert r.returncode == 0, r.stderr
        prev = f"{n}.tar.gz"
    return tmp_path


def test_backup_over_an_existing_archive_needs_overwrite(tmp_path, run_cli, chain):
    src, d = chain
    shas = {p.name: _sha(p) for p in d.iterdir()}
    # a new full backup over the parent of i1 and i2: refused, with or without --overwrite
    r = run_cli("backup", f"lmdb:{src}", d / "full.tar.gz")
    assert r.returncode == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    r = run_cli("backup", f"lmdb:{src}", d / "full.tar.gz", "--overwrite")
    assert r.returncode == 2, r.stderr
    assert "i1.tar.gz" in r.stderr and "use it as their parent" in r.stderr
    assert {p.name: _sha(p) for p in d.iterdir()} == shas
    # the newest archive has no dependents: --overwrite replaces it, without it nothing
    r = run_cli("backup", f"lmdb:{src}", d / "i2.tar.gz", "--parent", d / "i1.tar.gz")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert _sha(d / "i2.tar.gz") == shas["i2.tar.gz"]
    r = run_cli("backup", f"lmdb:{src}", d / "i2.tar.gz", "--overwrite", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backup"]["parent"] is None
    assert not [p for p in d.iterdir() if p.name.startswith(".")]
    # a dependent in a --parent-dir counts too
    other = tmp_path / "other"
    other.mkdir()
    (d / "i2.tar.gz").unlink()
    r = run_cli("backup", f"lmdb:{src}", other / "i2b.tar.gz", "--parent", d / "i1.tar.gz")
    assert r.returncode == 0, r.stderr
    r = run_cli("backup", f"lmdb:{src}", d / "i1.tar.gz", "--overwrite", "--parent-dir", other)
    assert r.returncode == 2 and "i2b.tar.gz" in r.stderr
    assert _sha(d / "i1.tar.gz") == shas["i1.tar.gz"]


def test_consolidate_never_replaces_its_chain_or_a_parent(tmp_path, run_cli, chain):
    _, d = chain
    shas = {p.name: _sha(p) for p in d.iterdir()}
    for out in ("i2.tar.gz", "i1.tar.gz", "full.tar.gz"):
        for extra in ([], ["--overwrite"]):
            r = run_cli("consolidate", d / "i2.tar.gz", d / out, *extra)
            assert r.returncode == 2, (out, extra, r.stderr)
            assert "an archive this one is made from" in r.stderr, r.stderr
    r = run_cli("consolidate", d / "i1.tar.gz", d / "i1.tar.gz")
    assert r.returncode == 2 and "made from" in r.stderr
    assert {p.name: _sha(p) for p in d.iterdir()} == shas
    # a new name works; the same name again needs --overwrite
    r = run_cli("consolidate", d / "i2.tar.gz", tmp_path / "c.tar.gz")
    assert r.returncode == 0, r.stderr
    first = _sha(tmp_path / "c.tar.gz")
    r = run_cli("consolidate", d / "i2.tar.gz", tmp_path / "c.tar.gz")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert _sha(tmp_path / "c.tar.gz") == first
    r = run_cli("consolidate", d / "i2.tar.gz", tmp_path / "c.tar.gz", "--overwrite")
    assert r.returncode == 0, r.stderr
    r = run_cli("restore", d / "i2.tar.gz", f"lmdb:{tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr


def test_python_api_refuses_by_default(tmp_path, chain):
    src, d = chain
    from dsbackup.errors import ArchiveExistsError

    mgr = BackupManager(BackupConfig())
    assert BackupConfig().overwrite is False
    before = _sha(d / "full.tar.gz")
    with pytest.raises(ArchiveExistsError, match="already exists"):
        mgr.create_backup(f"lmdb:{src}", d / "full.tar.gz")
    with pytest.raises(ArchiveExistsError, match="use it as their parent"):
        mgr.create_backup(f"lmdb:{src}", d / "full.tar.gz", overwrite=True)
    with pytest.raises(ArchiveExistsError, match="use it as their parent"):
        BackupManager(BackupConfig(overwrite=True)).create_backup(f"lmdb:{src}",
                                                                  d / "full.tar.gz")
    assert _sha(d / "full.tar.gz") == before
    assert mgr.get_metrics()["backups_failed"] == 2
    loose = tmp_path / "loose.tar.gz"
    loose.write_bytes(b"not an archive")
    meta = BackupManager(BackupConfig(overwrite=True)).create_backup(f"lmdb:{src}", loose)
    assert meta.total_keys == 1500


def test_writer_never_replaces_a_file_that_appears_while_it_writes(tmp_path):
    """The final name is linked into place: a file created there meanwhile is not replaced."""
    from dsbackup.archive.writer import ArchiveWriter
    from dsbackup.errors import ArchiveExistsError

    out = tmp_path / "a.tar.gz"
    manifest = {"format": "dsbackup", "version": 1, "parent": None}
    w = ArchiveWriter(out, manifest=manifest)
    out.write_bytes(b"someone else's")
    with pytest.raises(ArchiveExistsError):
        w.finish({})
    assert out.read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar.gz"]


def test_overwrite_spares_a_parent_of_an_encrypted_archive_it_cannot_read(tmp_path, run_cli,
                                                                          chain):
    """An encrypted incremental of full.tar.gz, its key not given: backup --overwrite could
    not read its parent reference and replaced full.tar.gz (exit 0), the incremental then
    unrestorable ("parent ... was altered or replaced")."""
    src, d = chain
    for p in ("i1.tar.gz", "i2.tar.gz"):
        (d / p).unlink()
    key = tmp_path / "pass"
    key.write_text("secret\n")
    key.chmod(0o600)
    enc = d / "enc.tar.gz"
    r = run_cli("backup", f"lmdb:{src}", enc, "--parent", d / "full.tar.gz", "--encrypt",
                "--passphrase-file", key)
    assert r.returncode == 0, r.stderr
    sha = _sha(d / "full.tar.gz")
    r = run_cli("backup", f"lmdb:{src}", d / "full.tar.gz", "--overwrite")
    assert r.returncode == 2 and "enc.tar.gz may use it as its parent" in r.stderr, r.stderr
    assert _sha(d / "full.tar.gz") == sha
    # with the key the reference is read: refused as any dependent is
    r = run_cli("backup", f"lmdb:{src}", d / "full.tar.gz", "--overwrite", "--encrypt",
                "--passphrase-file", key)
    assert r.returncode == 2 and "use it as their parent (" in r.stderr, r.stderr
    # an encrypted archive written before the one replaced cannot be its child
    os.utime(enc, (1, 1))
    r = run_cli("backup", f"lmdb:{src}", d / "full.tar.gz", "--overwrite")
    assert r.returncode == 0, r.stderr
    r = run_cli("restore", enc, f"lmdb:{tmp_path / 'r'}", "--passphrase-file", key)
    assert r.returncode == 2 and "altered or replaced" in r.stderr  # what the guard prevents
