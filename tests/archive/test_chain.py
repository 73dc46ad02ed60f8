"""Finding parent archives (issue #20 items 19 and 20): twins are ranked by content identity, a
parent lacking the key catalog the child needs is a clear exit 2 (never an IndexError, never
half a listing), --parent-dir must exist, grandparents are also looked for beside the top
archive, an "altered or replaced" message names a file once, and verify says a parent is
missing instead of "DAMAGED"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.datastores import open_datastore

N = 1500


def _store(tmp_path: Path) -> Path:
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(N)))
    return src


def _change(src: Path, n: int) -> None:
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/%05d" % (n * 89), b"changed %d" % n)


@pytest.fixture
def twins(tmp_path, run_cli):
    """d/with_cat (catalog) and d/twin (none) share a fingerprint; d/child (catalog) is an
    incremental of with_cat, which is then moved to moved/."""
    src = _store(tmp_path)
    d, moved = tmp_path / "d", tmp_path / "moved"
    d.mkdir()
    moved.mkdir()
    assert run_cli("backup", f"lmdb:{src}", d / "with_cat.tar.gz", "--chunk-size", "32",
                   "--include-metadata").returncode == 0
    assert run_cli("backup", f"lmdb:{src}", d / "twin.tar.gz", "--chunk-size", "32"
                   ).returncode == 0
    _change(src, 1)
    r = run_cli("backup", f"lmdb:{src}", d / "child.tar.gz", "--parent", d / "with_cat.tar.gz",
                "--include-metadata")
    assert r.returncode == 0, r.stderr
    shutil.move(d / "with_cat.tar.gz", moved / "with_cat.tar.gz")
    return src, d, moved


def test_a_twin_without_the_catalog_is_a_clear_error(tmp_path, run_cli, twins):
    src, d, _ = twins
    child = d / "child.tar.gz"
    for cmd in (["ls", child], ["ls", "-l", child], ["ls", "--json", child],
                ["verify", child], ["verify", "--quick", child],
                ["consolidate", child, tmp_path / "c.tar.gz"],
                # an incremental with a catalog on top would reference catalogs that are not
                # there: refused before anything is written
                ["backup", f"lmdb:{src}", tmp_path / "gc.tar.gz", "--parent", child,
                 "--include-metadata"]):
        r = run_cli(*cmd)
        assert r.returncode == 2, (cmd, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and "IndexError" not in r.stderr, r.stderr
        assert "twin.tar.gz" in r.stderr and "key catalog" in r.stderr, r.stderr
        assert "DAMAGED" not in r.stderr
        if "--json" in cmd:  # one error object, no header and no key rows before it
            lines = r.stdout.splitlines()
            assert len(lines) == 1 and json.loads(lines[0])["ok"] is False, r.stdout[:300]
        else:
            assert r.stdout == "", (cmd, r.stdout[:200])  # nothing printed before failing
    assert not (tmp_path / "c.tar.gz").exists() and not (tmp_path / "gc.tar.gz").exists()
    # without a catalog of its own, an incremental on top needs none from its parents
    r = run_cli("backup", f"lmdb:{src}", tmp_path / "gc.tar.gz", "--parent", child)
    assert r.returncode == 0, r.stderr
    # a restore needs no catalog: the twin's chunks serve it
    r = run_cli("restore", child, f"lmdb:{tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr


def test_the_referenced_archive_wins_over_a_twin_beside_the_child(tmp_path, run_cli, twins):
    _, d, moved = twins
    child = d / "child.tar.gz"
    # the twin even takes the referenced archive's name beside the child
    shutil.copy(d / "twin.tar.gz", d / "with_cat.tar.gz")
    r = run_cli("verify", child, "--parent-dir", moved, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parents"] == [str(moved / "with_cat.tar.gz")]
    r = run_cli("ls", child, "--parent-dir", moved)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == N
    r = run_cli("consolidate", child, tmp_path / "c.tar.gz", "--parent-dir", moved)
    assert r.returncode == 0, r.stderr


def test_parent_dir_that_does_not_exist_is_an_error(tmp_path, run_cli, twins):
    src, d, moved = twins
    child = d / "child.tar.gz"
    nosuch = tmp_path / "nosuch"
    for cmd in (["ls", child], ["verify", child], ["restore", child, f"lmdb:{tmp_path / 'r'}"],
                ["consolidate", child, tmp_path / "c.tar.gz"],
                ["backup", f"lmdb:{src}", tmp_path / "n.tar.gz", "--parent", child]):
        r = run_cli(*cmd, "--parent-dir", moved, "--parent-dir", nosuch)
        assert r.returncode == 2, (cmd, r.stderr)
        assert f"parent directory {nosuch} (--parent-dir) does not exist" in r.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "n.tar.gz").exists()


def test_grandparent_beside_the_top_archive_is_found_with_parent_dir(tmp_path, run_cli):
    src = _store(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert run_cli("backup", f"lmdb:{src}", a / "full.tar.gz", "--chunk-size", "32"
                   ).returncode == 0
    _change(src, 1)
    assert run_cli("backup", f"lmdb:{src}", a / "inc1.tar.gz", "--parent", a / "full.tar.gz"
                   ).returncode == 0
    _change(src, 2)
    assert run_cli("backup", f"lmdb:{src}", a / "inc2.tar.gz", "--parent", a / "inc1.tar.gz"
                   ).returncode == 0
    shutil.move(a / "inc1.tar.gz", b / "inc1.tar.gz")  # only the middle archive moved away
    r = run_cli("verify", a / "inc2.tar.gz", "--parent-dir", b, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parents"] == [str(b / "inc1.tar.gz"), str(a / "full.tar.gz")]
    r = run_cli("restore", a / "inc2.tar.gz", f"lmdb:{tmp_path / 'r'}", "--parent-dir", b)
    assert r.returncode == 0, r.stderr


def test_altered_parent_is_named_once_and_verify_says_parent_missing(tmp_path, run_cli):
    src = _store(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    assert run_cli("backup", f"lmdb:{src}", d / "full.tar.gz", "--chunk-size", "32"
                   ).returncode == 0
    _change(src, 1)
    assert run_cli("backup", f"lmdb:{src}", d / "inc.tar.gz", "--parent", d / "full.tar.gz"
                   ).returncode == 0
    _change(src, 2)
    (d / "full.tar.gz").unlink()  # replaced by a backup of other data under the same name
    assert run_cli("backup", f"lmdb:{src}", d / "full.tar.gz", "--chunk-size", "32"
                   ).returncode == 0
    r = run_cli("verify", d / "inc.tar.gz")
    assert r.returncode == 2, r.stderr
    assert "altered or replaced" in r.stderr
    assert r.stderr.count(str(d / "full.tar.gz")) == 1, r.stderr
    assert "DAMAGED" not in r.stderr and "parent archive is missing" in r.stderr
    (d / "full.tar.gz").unlink()
    r = run_cli("verify", d / "inc.tar.gz")
    assert r.returncode == 2 and "DAMAGED" not in r.stderr and "is missing" in r.stderr
    r = run_cli("verify", d / "inc.tar.gz", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["ok"] is False


def test_an_incremental_from_standard_input_says_it_has_no_directory(tmp_path, run_cli):
    # "-" has no directory of its own: the message said "not found in  (give its directory
    # with --parent-dir)", an empty list of places
    src = _store(tmp_path)
    full, inc = tmp_path / "full.tar.gz", tmp_path / "inc.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", full, "--chunk-size", "64").returncode == 0
    _change(src, 1)
    assert run_cli("backup", f"lmdb:{src}", inc, "--parent", full).returncode == 0
    for argv in (["consolidate", "-", tmp_path / "c.tar.gz"], ["ls", "-"],
                 ["restore", "-", f"lmdb:{tmp_path / 'r'}"]):
        with open(inc, "rb") as f:
            r = run_cli(*argv, stdin=f)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert "full.tar.gz" in last and "not found in  " not in last, last
        assert "an archive read from standard input has no directory" in last, last
    assert not (tmp_path / "c.tar.gz").exists() and not (tmp_path / "r").exists()
    with open(inc, "rb") as f:
        r = run_cli("consolidate", "-", tmp_path / "c.tar.gz", "--parent-dir", tmp_path,
                    stdin=f)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", ["z" * 5000, "loop"], ids=["name-too-long", "symlink-loop"])
def test_a_parent_name_no_file_can_have_is_a_missing_parent(tmp_path, name):
    """A manifest may name its parent anything (a hostile archive; found by
    benchmarks/fuzz_archives.py): a name longer than the filesystem allows, or a symlink loop,
    is a candidate that is not there — the search goes on and ends in MissingParentError
    (exit 2, one line), not "File name too long" raised from a stat."""
    from dsbackup.archive.chain import ParentRef, find_parent
    from dsbackup.archive.reader import ArchiveReader
    from dsbackup.errors import MissingParentError

    (tmp_path / "loop").symlink_to("loop")
    ref = ParentRef("0" * 32, name, None, name)
    with pytest.raises(MissingParentError, match="is missing"):
        find_parent(ref, tmp_path / "child.tar.gz", [], ArchiveReader)


@pytest.mark.parametrize("parent", ["without a catalog", "of an empty store"])
def test_an_incremental_with_a_catalog_over_a_parent_holding_none_of_it_is_usable(
        tmp_path, run_cli, parent):
    """`backup --include-metadata --parent P` where P has no key catalog (made without
    --include-metadata, or of an empty store, which has no chunks and so no catalog even
    with it) refers to no chunk of P: it stores every chunk with its catalog. The backup
    said OK, but verify, ls and consolidate refused the archive, exit 2, "its key catalog
    continues in parent P, which has none (an archive of the same data made without
    --include-metadata was found in place of the one referenced)" — P being the very
    archive referenced. (A new node's first scheduled backup with include_metadata is of an
    empty store.)"""
    src = _store(tmp_path)
    empty = tmp_path / "empty"
    datasets.write_lmdb(str(empty), iter(()))
    p = tmp_path / "p.tar.gz"
    args = ([f"lmdb:{src}", p] if parent == "without a catalog"
            else [f"lmdb:{empty}", p, "--include-metadata"])
    assert run_cli("backup", *args).returncode == 0
    child = tmp_path / "child.tar.gz"
    r = run_cli("backup", f"lmdb:{src}", child, "--parent", p, "--include-metadata")
    assert r.returncode == 0, r.stderr
    grandchild = tmp_path / "gc.tar.gz"
    for cmd in (["verify", child], ["ls", child], ["consolidate", child, tmp_path / "c.tar.gz"],
                ["backup", f"lmdb:{src}", grandchild, "--parent", child, "--include-metadata"],
                ["verify", grandchild], ["ls", "-l", grandchild, "--prefix", "/r"]):
        r = run_cli(*cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "key catalog" not in r.stderr
        if cmd[0] == "ls":
            assert len(r.stdout.splitlines()) == N


def test_too_many_open_files_is_said_not_taken_for_an_altered_parent(tmp_path):
    """Every archive of a parent chain is held open: a chain longer than the open-file limit
    allows (ulimit -n) made verify, ls, restore and backup --parent say "parent archive P
    was altered or replaced: P (not a readable archive)", sending the user after a damage
    that is not there. The open error is now said as it is, exit 2."""
    import resource
    import subprocess
    import sys

    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    mgr = BackupManager(BackupConfig(workers=1))
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    prev = None
    for i in range(40):
        ds.put(b"/n/%02d" % i, b"v%d" % i)
        cur = tmp_path / f"a{i:02d}.tar.gz"
        mgr.create_backup(ds, cur, parent=prev)
        prev = cur
    ds.close()

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))

    env = dict(__import__("os").environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    for cmd in (["verify", prev], ["ls", prev], ["restore", prev, f"lmdb:{tmp_path / 'r'}"],
                ["backup", f"lmdb:{tmp_path / 's'}", tmp_path / "n.tar.gz", "--parent", prev]):
        r = subprocess.run([sys.executable, "-m", "dsbackup", *map(str, cmd)], env=env,
                           capture_output=True, text=True, timeout=120, preexec_fn=low_limit)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "cannot open: Too many open files" in r.stderr and "ulimit -n" in r.stderr, (
            cmd, r.stderr)
        assert "altered or replaced" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "n.tar.gz").exists()


def test_a_parent_under_another_key_is_said_so(tmp_path, monkeypatch):
    """An encrypted incremental whose parent file was replaced by an archive encrypted under
    another passphrase (a mix-up of passphrases, or of files): 'P (not a readable archive)'
    hid the reason; the candidate is now named with 'wrong passphrase or key for it'."""
    from dsbackup.archive import crypto
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig
    from dsbackup.errors import MissingParentError

    monkeypatch.setenv(crypto.TEST_LOG2_N_ENV, "14")
    src = _store(tmp_path)
    key, other = crypto.KeyMaterial(key=b"a" * 32), crypto.KeyMaterial(key=b"b" * 32)
    parent, child = tmp_path / "p.tar.gz", tmp_path / "c.tar.gz"
    BackupManager(BackupConfig(chunk_size=64, encryption=key)).create_backup(f"lmdb:{src}",
                                                                             parent)
    _change(src, 3)
    mgr = BackupManager(BackupConfig(encryption=key))
    mgr.create_backup(f"lmdb:{src}", child, parent=parent)
    parent.unlink()
    BackupManager(BackupConfig(chunk_size=64, encryption=other)).create_backup(
        f"lmdb:{src}", parent)
    with pytest.raises(MissingParentError) as exc:
        mgr.restore_backup(child, f"lmdb:{tmp_path / 'dst'}", key=key)
    assert f"{parent} (wrong passphrase or key for it)" in str(exc.value)
