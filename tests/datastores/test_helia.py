"""helia: and fsds: against repositories written in Helia's js-stores layouts
(tests/support/helia_repo.py), cross restores with Kubo, and foreign-file accounting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helia_repo import helia_block_path, make_helia_repo, write_blockstore
from snapshot import assert_unchanged, snapshot

from dsbackup.datastores import open_datastore
from dsbackup.datastores.fsds import FsDatastore
from dsbackup.errors import InvalidKey

SRC = Path(__file__).resolve().parents[2] / "src"
COPY_PLAN = """id = "copy-test"
version = "1"

[[steps]]
id = "copy"
type = "copy"
source = "source"
target = "target"
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def files(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Relative path -> (mode, content or None for a directory)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = (p.stat().st_mode & 0o777, None if p.is_dir() else p.read_bytes())
    return out


def kubo_repo(tmp_path: Path, go_fixtures: Path) -> Path:
    """An empty Kubo repo: the fixture's config files, no datastore contents."""
    dst = tmp_path / "kubo"
    dst.mkdir()
    for name in ("config", "datastore_spec", "version"):
        shutil.copy(go_fixtures / "kubo-v16-repo" / name, dst / name)
    return dst


@pytest.mark.parametrize("level", [False, True], ids=["datastore-fs", "datastore-level"])
def test_helia_repo_round_trip_is_file_identical(tmp_path, level):
    repo = tmp_path / "repo"
    blocks, records = make_helia_repo(repo, blocks=320, level=level)
    before = snapshot(repo) if not level else None
    r = cli("backup", f"helia:{repo}", str(tmp_path / "h.tar.gz"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backup"]["total_keys"] == len(blocks) + len(records)
    if before is not None:  # LevelDB's own open is another helper's (snapshot copy) concern
        assert_unchanged(before, snapshot(repo))
    out = tmp_path / "out"
    r = cli("restore", str(tmp_path / "h.tar.gz"), f"helia:{out}"
            + ("?datastore=level" if level else ""))
    assert r.returncode == 0, r.stderr
    if level:
        assert files(out / "blocks") == files(repo / "blocks")
        ds = open_datastore(f"helia:{out}", readonly=True)
        assert {k: v for ks, vs in ds.scan_batches(b"/", b"/blocks/") for k, v in
                zip(ks, vs)} | {k: v for ks, vs in ds.scan_batches(b"/blocks0") for k, v in
                                zip(ks, vs)} == records
        ds.close()
    else:
        assert files(out) == files(repo)  # same files, contents and modes; nothing extra


def test_helia_keys_are_kubos_and_cross_restores(tmp_path, go_fixtures):
    repo = tmp_path / "repo"
    blocks, _ = make_helia_repo(repo, blocks=310)
    ds = open_datastore(f"helia:{repo}", readonly=True)
    keys = [k for ks, _ in ds.scan_batches(b"/blocks/", b"/blocks0") for k in ks]
    assert keys == sorted(f"/blocks/{n}".encode() for n in blocks)
    ds.close()
    assert cli("backup", f"helia:{repo}", str(tmp_path / "h.tar.gz")).returncode == 0
    kubo = kubo_repo(tmp_path, go_fixtures)
    r = cli("restore", str(tmp_path / "h.tar.gz"), f"kubo:{kubo}")
    assert r.returncode == 0, r.stderr
    for name, value in blocks.items():  # Kubo's name: next-to-last/2 of the bare multihash
        f = kubo / "blocks" / name[-3:-1] / f"{name}.data"
        assert f.read_bytes() == value
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask()  # 0644 under umask 022
    # and back: the Kubo repo's archive into a new Helia repo gives the same block files
    assert cli("backup", f"kubo:{kubo}", str(tmp_path / "k.tar.gz")).returncode == 0
    back = tmp_path / "back"
    r = cli("restore", str(tmp_path / "k.tar.gz"), f"helia:{back}")
    assert r.returncode == 0, r.stderr
    assert files(back / "blocks") == files(repo / "blocks")


def test_kubo_fixture_restores_into_helia(tmp_path, go_fixtures):
    src = tmp_path / "k"
    shutil.copytree(go_fixtures / "kubo-v16-repo", src)
    assert cli("backup", f"kubo:{src}", str(tmp_path / "k.tar.gz")).returncode == 0
    out = tmp_path / "h"
    assert cli("restore", str(tmp_path / "k.tar.gz"), f"helia:{out}").returncode == 0
    names = sorted(p.name for p in (src / "blocks").glob("*/*.data"))
    got = sorted(p.name for p in (out / "blocks").glob("*/*.data"))
    assert got == ["B" + n for n in names]
    assert all(p.parent.name == p.stem[-2:] for p in (out / "blocks").glob("*/*.data"))
    assert {p.name for p in (out / "blocks").iterdir() if p.is_file()} == set()


def test_wrong_shard_exits_2_with_the_hint_and_skip_foreign_exits_1(tmp_path):
    repo = tmp_path / "repo"
    make_helia_repo(repo, blocks=302)
    before = snapshot(repo)
    uri = f"flatfs:{repo}/blocks?shard=next-to-last/2"
    r = cli("backup", uri, str(tmp_path / "a.tar.gz"))
    assert r.returncode == 2
    assert "helia:REPO" in r.stderr and "shard=suffix/2" in r.stderr
    assert f"use helia:{repo} " in r.stderr and f"flatfs:{repo}/blocks?shard=suffix/2" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "a.tar.gz").exists()
    r = cli("backup", uri, str(tmp_path / "b.tar.gz"), "--skip-foreign", "--json")
    assert r.returncode == 1, r.stderr
    stats = json.loads(r.stdout)["backup"]["statistics"]
    assert stats["foreign_files"] > 250 and stats["skipped_files"]
    assert stats["foreign_files"] + stats["keys_processed"] == 302
    assert_unchanged(before, snapshot(repo))
    # the advice works
    r = cli("backup", f"flatfs:{repo}/blocks?shard=suffix/2", str(tmp_path / "c.tar.gz"))
    assert r.returncode == 0, r.stderr


def test_stray_files_in_a_kubo_flatfs_are_reported(tmp_path, go_fixtures):
    src = tmp_path / "k"
    shutil.copytree(go_fixtures / "kubo-v16-repo", src)
    shard = next(p for p in (src / "blocks").iterdir() if p.is_dir() and p.name != ".temp")
    (shard / "notes.txt").write_bytes(b"x")
    r = cli("backup", f"kubo:{src}", str(tmp_path / "k.tar.gz"))
    assert r.returncode == 2 and "notes.txt" in r.stderr and "--skip-foreign" in r.stderr
    (src / "blocks" / ".temp").mkdir(exist_ok=True)
    (src / "blocks" / ".temp" / "temp-123").write_bytes(b"go-ds-flatfs's working file")
    (shard / "notes.txt").unlink()
    assert cli("backup", f"kubo:{src}", str(tmp_path / "k.tar.gz")).returncode == 0


def test_files_vanishing_mid_backup_are_counted(tmp_path):
    """A file listed by the scan but gone when read: exit 1, counted, named."""
    from dsbackup.backup import BackupManager
    from dsbackup.config import BackupConfig
    from dsbackup.datastores.flatfs import FlatfsDatastore

    ds = FlatfsDatastore(tmp_path / "b", sync=False)
    ds.put_many([f"/K{i:04d}".encode() for i in range(600)], [b"v" * 100] * 600)
    ds.close()
    ro = FlatfsDatastore(tmp_path / "b", readonly=True)
    real = ro._open_read
    gone = [0]

    def vanishing(path: bytes) -> int:
        if path.endswith(b"7.data"):  # 60 of 600 vanish between listing and reading
            gone[0] += 1
            raise FileNotFoundError(2, "No such file or directory", path)
        return real(path)

    ro._open_read = vanishing
    meta = BackupManager(BackupConfig(workers=1)).create_backup(ro, tmp_path / "a.tar.gz")
    s = meta.statistics
    assert gone[0] == 60 and s.unreadable_files == 60 and meta.total_keys == 540
    assert s.incomplete and "vanished" in s.skipped_files[0]


def test_files_deleted_between_listing_and_reading_are_counted(tmp_path):
    """Files deleted after the listing, before they are read (what a concurrent writer does)."""
    import threading

    from dsbackup.backup import BackupManager
    from dsbackup.config import BackupConfig
    from dsbackup.datastores.flatfs import FlatfsDatastore

    root = tmp_path / "b"
    ds = FlatfsDatastore(root, sync=False)
    ds.put_many([f"/K{i:05d}".encode() for i in range(3000)], [b"v" * 64] * 3000)
    ds.close()
    ro = FlatfsDatastore(root, readonly=True)
    listed = threading.Event()
    orig = ro._lister.sorted_names

    def names(start, end):
        for group in orig(start, end):
            for p in root.glob("*/K00*.data"):  # delete after listing, before reading
                p.unlink()
            listed.set()
            yield group

    ro._lister.sorted_names = names
    meta = BackupManager(BackupConfig(workers=1)).create_backup(ro, tmp_path / "a.tar.gz")
    assert listed.is_set()
    assert meta.statistics.unreadable_files == 1000 and meta.total_keys == 2000


def test_fsds_layout(tmp_path):
    ds = FsDatastore(tmp_path / "d", sync=False)
    ds.put("/a/b/c", b"abc")
    ds.put("/a", b"top")
    ds.put("/e", b"")
    ds.put_many([b"/x/y", b"/a-b"], [b"1", b"2"])
    assert (tmp_path / "d" / "a" / "b" / "c.data").read_bytes() == b"abc"
    assert (tmp_path / "d" / "a.data").read_bytes() == b"top"
    assert (tmp_path / "d" / "e.data").read_bytes() == b""
    assert (tmp_path / "d" / "a" / "b" / "c.data").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [k for ks, _ in ds.scan_batches() for k in ks] == sorted(
        [b"/a", b"/a/b/c", b"/e", b"/x/y", b"/a-b"])
    for bad in [b"/", b"/a//b", b"/a/./b", b"/../x", b"/a\x00b", b"/" + b"n" * 251, b"/a/"]:
        with pytest.raises(InvalidKey, match="cannot be stored"):
            ds.put(bad, b"x")
    assert sorted(p.name for p in (tmp_path / "d").rglob("*") if p.name.startswith(".")) == []
    (tmp_path / "d" / "a" / "stray.tmp").write_bytes(b"")
    assert ds.audit_files().count == 1
    ds.close()


def test_fsds_key_refused_names_the_key_on_restore(tmp_path):
    src = open_datastore(f"lmdb:{tmp_path / 'l'}")
    src.put(b"/ok", b"1")
    src.put(b"/bad//key", b"2")
    src.close()
    assert cli("backup", f"lmdb:{tmp_path / 'l'}", str(tmp_path / "a.tar.gz")).returncode == 0
    r = cli("restore", str(tmp_path / "a.tar.gz"), f"fsds:{tmp_path / 'f'}")
    assert r.returncode == 2 and "/bad//key" in r.stderr and "Traceback" not in r.stderr


def test_helia_copy_migration_leaves_source_and_writes_no_metadata(tmp_path):
    repo = tmp_path / "repo"
    make_helia_repo(repo, blocks=40)
    before = snapshot(repo)
    plan = tmp_path / "copy.toml"
    plan.write_text(COPY_PLAN)
    r = cli("migrate", str(plan), f"helia:{repo}", f"helia:{tmp_path / 'to'}")
    assert r.returncode == 0, r.stderr
    assert_unchanged(before, snapshot(repo))
    assert files(tmp_path / "to") == files(repo)  # no SHARDING, .temp, diskUsage.cache


def test_flatfs_copy_migration_leaves_a_go_source_alone(tmp_path, go_fixtures):
    src = tmp_path / "blocks"
    shutil.copytree(go_fixtures / "kubo-v16-repo" / "blocks", src)
    shutil.rmtree(src / ".temp", ignore_errors=True)
    (src / "diskUsage.cache").unlink(missing_ok=True)
    before = snapshot(src)
    plan = tmp_path / "copy.toml"
    plan.write_text(COPY_PLAN)
    r = cli("migrate", str(plan), f"flatfs:{src}", f"flatfs:{tmp_path / 'to'}")
    assert r.returncode == 0, r.stderr
    assert_unchanged(before, snapshot(src))
    r = cli("backup", f"flatfs:{src}", str(tmp_path / "a.tar.gz"))
    assert r.returncode == 0, r.stderr
    assert_unchanged(before, snapshot(src))


def test_helia_blockstore_with_missing_b_prefix_is_foreign(tmp_path):
    root = tmp_path / "repo" / "blocks"
    write_blockstore(root, {"CIQAAAA": b"x"})
    p = helia_block_path(root, "CIQAAAA")
    p.rename(p.parent / "CIQAAAA.data")  # no multibase prefix: not a blockstore-fs name
    ds = open_datastore(f"helia:{tmp_path / 'repo'}", readonly=True)
    assert ds.audit_files().count == 1 and ds.is_empty()
    ds.close()


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_non_empty_store_with_no_records_is_never_exit_0(tmp_path):
    d = tmp_path / "fs"
    (d / "a").mkdir(parents=True)
    (d / "a" / "b.json").write_bytes(b"{}")  # not datastore-fs: no .data
    r = cli("backup", f"fsds:{d}", str(tmp_path / "a.tar.gz"))
    assert r.returncode == 2 and "a/b.json" in r.stderr
    r = cli("backup", f"fsds:{d}", str(tmp_path / "a.tar.gz"), "--skip-foreign")
    assert r.returncode == 1 and "1 foreign" in r.stderr


def test_bare_helia_path_is_detected(tmp_path):
    make_helia_repo(tmp_path / "repo", blocks=5, records=2)
    ds = open_datastore(str(tmp_path / "repo"), readonly=True)
    assert ds.uri == f"helia:{tmp_path / 'repo'}" and ds.datastore_kind == "fs"
    ds.close()


def test_unreadable_file_in_a_parallel_backup_is_reported(tmp_path):
    """Worker processes report what they could not read; the CLI exits 1 and names it."""
    root = tmp_path / "b"
    ds = open_datastore(f"flatfs:{root}?shard=next-to-last/2&metadata=0")
    ds.put_many([f"/CIQ{i:04d}".encode() for i in range(400)], [b"v" * 300] * 400)
    ds.close()
    name = "CIQGONE"
    shard = root / name[-3:-1]
    shard.mkdir(exist_ok=True)
    (shard / f"{name}.data").symlink_to(tmp_path / "nowhere")  # listed, cannot be opened
    r = cli("backup", "--workers", "2", f"flatfs:{root}?shard=next-to-last/2",
            str(tmp_path / "a.tar.gz"), "--json")
    assert r.returncode == 1, r.stderr
    b = json.loads(r.stdout)["backup"]
    assert b["statistics"]["mode"] == "parallel" and b["total_keys"] == 400
    assert b["statistics"]["unreadable_files"] == 1
    assert "CIQGONE.data (vanished)" in b["statistics"]["skipped_files"][0]
