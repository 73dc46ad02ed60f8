"""Nothing skipped silently: foreign files (exit 2 with the right URI, --skip-foreign exit 1)
and files that vanish or fail to read during a backup (counted, exit 1)."""

from __future__ import annotations

import json
import shutil

from helia_repo import make_helia_repo
from runcli import COPY_PLAN, cli
from snapshot import assert_unchanged, snapshot

from dsbackup.datastores import open_datastore


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
    from dsbackup.datastores.flatfs import FlatfsDatastore
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

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

    from dsbackup.datastores.flatfs import FlatfsDatastore
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

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


def test_unreadable_file_in_a_parallel_backup_is_reported(tmp_path):
    """Worker processes report what they could not read; the CLI exits 1 and names it."""
    root = tmp_path / "b"
    ds = open_datastore(f"flatfs:{root}?shard=next-to-last/2&metadata=0")
    # 36 MB: over PARALLEL_MIN_BYTES by its sampled size (no diskUsage.cache), so parallel
    ds.put_many([f"/CIQ{i:04d}".encode() for i in range(400)], [b"v" * 90_000] * 400)
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
