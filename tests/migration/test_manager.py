"""MigrationManager end to end on real stores (LMDB, flatfs, LevelDB, SQLite, memory)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dsbackup import (
    FilterConfig,
    MigrationConfig,
    MigrationManager,
    MigrationPlan,
    MigrationStep,
    TransformationConfig,
)
from dsbackup.datastores import open_datastore
from dsbackup.errors import ConfigError, MigrationError
from dsbackup.migration import JournalCorrupt

from .helpers import block_items, dir_hash, fill, kv_items, records, store_digest


def plan_of(*steps: MigrationStep, rollback: list[MigrationStep] | None = None,
            pid: str = "p") -> MigrationPlan:
    return MigrationPlan(id=pid, version="1", steps=list(steps), rollback=rollback or [])


def copy_step(**kw) -> MigrationStep:
    return MigrationStep(id=kw.pop("id", "copy"), type="copy", **kw)


def test_copy_with_filter_and_transforms_then_rerun_does_nothing(tmp_path: Path) -> None:
    items = kv_items(3000)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, items)
    plan = plan_of(copy_step(filters=FilterConfig(key_prefix="/a"),
                             transform=TransformationConfig(key_transform="add_prefix:/v2",
                                                            value_transform="gzip")),
                   MigrationStep(id="check", type="validate",
                                 filters=FilterConfig(key_prefix="/a"),
                                 transform=TransformationConfig(key_transform="add_prefix:/v2",
                                                                value_transform="gzip")))
    mgr = MigrationManager(MigrationConfig(batch_size=256))
    res = mgr.execute_migration(plan, src, dst)
    assert res.success, res.error_log
    a_keys = [k for k in items if k.startswith(b"/a/")]
    step = res.steps[0]
    assert (step.records, step.written, step.changed) == (len(a_keys), len(a_keys), len(a_keys))
    assert step.skipped == 0  # the prefix is the scan range: nothing else is even read
    got = records(dst)
    import gzip
    assert {k: gzip.decompress(v) for k, v in got.items()} == \
        {b"/v2" + k: items[k] for k in a_keys}
    assert res.steps[1].records == len(a_keys) and res.steps[1].errors == 0
    assert Path(res.stamp_path).is_file()
    assert store_digest(src) == store_digest_dict(items)
    before = dir_hash(tmp_path / "dst")
    again = mgr.execute_migration(plan, src, dst)
    assert again.success and again.already_completed
    assert all(s.status == "skipped" for s in again.steps)
    assert dir_hash(tmp_path / "dst") == before
    m = mgr.get_metrics()
    assert m["migrations_total"] == 2 and m["migrations_succeeded"] == 2
    assert m["records_total"] >= len(a_keys)


def store_digest_dict(items: dict[bytes, bytes]) -> str:
    ds = open_datastore("memory:")
    ds.put_many(sorted(items), [items[k] for k in sorted(items)])
    return store_digest(ds)


def test_dry_run_changes_no_byte_on_disk(tmp_path: Path) -> None:
    items = kv_items(2000)
    blocks, _ = block_items(200)
    fill(f"lmdb:{tmp_path}/src", items)
    fill(f"lmdb:{tmp_path}/dst", {b"/old": b"x"})
    fill(f"flatfs:{tmp_path}/blocks?shard=next-to-last/2&sync=false", blocks)
    plan = plan_of(
        copy_step(transform=TransformationConfig(key_transform="add_prefix:/n")),
        MigrationStep(id="mv", type="move", filters=FilterConfig(key_prefix="/m")),
        MigrationStep(id="inplace", type="transform", source="target", target="target",
                      transform=TransformationConfig(value_transform="gzip")),
        MigrationStep(id="clean", type="cleanup"))
    before = dir_hash(tmp_path)
    mgr = MigrationManager(MigrationConfig(dry_run=True, sample_size=3, backup_before=True))
    res = mgr.execute_migration(plan, f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst")
    assert res.success and res.dry_run
    assert res.steps[0].written == len(items) and res.steps[0].changed == len(items)
    assert res.steps[0].sample[0] == {"action": "copy", "key": "/a/000000",
                                      "size": len(items[b"/a/000000"]),
                                      "new_key": "/n/a/000000"}
    assert res.steps[1].deleted == res.steps[1].written == len([k for k in items
                                                                if k.startswith(b"/m/")])
    assert res.steps[2].changed == 1  # the target as it is now: one record
    res2 = MigrationManager(MigrationConfig(dry_run=True)).execute_migration(
        plan_of(MigrationStep(id="rekey", type="transform", source="target", target="target",
                              transform=TransformationConfig(key_transform="cid_to_multihash"))),
        f"lmdb:{tmp_path}/src", f"flatfs:{tmp_path}/blocks")
    assert res2.success and res2.steps[0].changed == 100
    res3 = MigrationManager(MigrationConfig(dry_run=True)).execute_migration(
        plan_of(copy_step()), f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/not-there-yet")
    assert res3.success and res3.steps[0].written == len(items)
    assert dir_hash(tmp_path) == before
    assert not (tmp_path / "not-there-yet").exists()


def test_reshard_flatfs_2_to_3_is_exact(tmp_path: Path) -> None:
    blocks, _ = block_items(300)
    src = f"flatfs:{tmp_path}/b2?shard=next-to-last/2&sync=false"
    dst = f"flatfs:{tmp_path}/b3?shard=next-to-last/3&sync=false"
    fill(src, blocks)
    res = MigrationManager(MigrationConfig(batch_size=100)).execute_migration(
        plan_of(copy_step()), src, dst)
    assert res.success, res.error_log
    assert store_digest(src) == store_digest(dst) == store_digest_dict(blocks)
    assert (tmp_path / "b3" / "SHARDING").read_text().strip().endswith("next-to-last/3")
    shard_dirs = [p.name for p in (tmp_path / "b3").iterdir() if p.is_dir()
                  and not p.name.startswith(".")]
    assert shard_dirs and all(len(d) == 3 for d in shard_dirs)
    key = next(iter(blocks)).decode()[1:]
    assert (tmp_path / "b3" / key[-4:-1] / f"{key}.data").read_bytes() == blocks[b"/" + key.encode()]


def test_lmdb_flatfs_leveldb_round_trip_is_exact(tmp_path: Path) -> None:
    blocks, _ = block_items(500)
    lm, ff, ldb, back = (f"lmdb:{tmp_path}/l", f"flatfs:{tmp_path}/f?shard=next-to-last/2&sync=false",
                         f"leveldb:{tmp_path}/ldb", f"lmdb:{tmp_path}/back")
    fill(lm, blocks)
    want = store_digest(lm)
    mgr = MigrationManager(MigrationConfig(batch_size=64))
    for a, b in ((lm, ff), (ff, ldb), (ldb, back)):
        res = mgr.execute_migration(plan_of(copy_step(), pid="hop"), a, b)
        assert res.success, res.error_log
        assert store_digest(b) == want
    assert store_digest(lm) == want


def test_move_deletes_source_only_after_durable_copy(tmp_path: Path) -> None:
    items = kv_items(1500)
    src, dst = f"sqlite:{tmp_path}/src.db", f"lmdb:{tmp_path}/dst"
    fill(src, items)
    res = MigrationManager(MigrationConfig(batch_size=100)).execute_migration(
        plan_of(MigrationStep(id="mv", type="move", filters=FilterConfig(key_prefix="/m"))),
        src, dst)
    assert res.success, res.error_log
    moved = {k: v for k, v in items.items() if k.startswith(b"/m/")}
    assert records(dst) == moved
    assert records(src) == {k: v for k, v in items.items() if k not in moved}
    assert res.steps[0].deleted == res.steps[0].written == len(moved)


def test_in_place_transform_handles_chains_and_collisions(tmp_path: Path) -> None:
    items = {b"/x": b"1", b"/p/x": b"2", b"/p/p/x": b"3", b"/q": b"4"}
    uri = f"lmdb:{tmp_path}/db"
    fill(uri, items)
    res = MigrationManager(MigrationConfig(batch_size=1)).execute_migration(
        plan_of(MigrationStep(id="t", type="transform", source="target", target="target",
                              transform=TransformationConfig(key_transform="add_prefix:/p"),
                              filters=FilterConfig(key_patterns=["/x", "/p/**"]))),
        uri, uri)
    assert res.success, res.error_log
    assert records(uri) == {b"/p/x": b"1", b"/p/p/x": b"2", b"/p/p/p/x": b"3", b"/q": b"4"}
    assert not any(k.startswith(b"/_DSMIGRATE_") for k in records(uri))


def test_failing_validator_stops_rolls_back_and_source_is_unchanged(tmp_path: Path) -> None:
    items = kv_items(900)
    items[b"/m/zzz-bad"] = b"x" * 5000  # one record the size validator rejects
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, items)
    before = store_digest(src)
    plan = plan_of(
        MigrationStep(id="mv", type="move", filters=FilterConfig(key_prefix="/m"),
                      transform=TransformationConfig(key_transform="add_prefix:/moved")),
        MigrationStep(id="check", type="validate", source="target", compare=False,
                      transform=TransformationConfig(validators=["size_validator:1000"])),
        MigrationStep(id="never", type="copy"),
        rollback=[MigrationStep(id="back", type="move", source="target", target="source",
                                filters=FilterConfig(key_prefix="/moved"),
                                transform=TransformationConfig(
                                    key_transform="remove_prefix:/moved"))])
    res = MigrationManager(MigrationConfig(batch_size=50)).execute_migration(plan, src, dst)
    assert not res.success and res.error == "ValidationError" and res.exit_code == 2
    assert [s.status for s in res.steps] == ["completed", "failed", "not_run"]
    assert res.steps[1].errors == 1 and "/moved/m/zzz-bad" in res.error_log[0]
    assert res.rollback is not None and res.rollback.performed and res.rollback.method == "steps"
    n_moved = sum(1 for k in items if k.startswith(b"/m/"))
    assert res.rollback.steps[0].written == n_moved == res.rollback.steps[0].deleted
    assert store_digest(src) == before
    assert records(dst) == {}
    assert not Path(tmp_path / "dst.dsmigrate" / "p.version").exists()
    assert not Path(tmp_path / "dst.dsmigrate" / "p.journal").exists()  # retired


def test_failing_validator_in_copy_without_rollback_steps(tmp_path: Path) -> None:
    blocks, _ = block_items(50)
    k = next(iter(blocks))
    blocks[k] = blocks[k] + b"tampered"
    src, dst = f"flatfs:{tmp_path}/b", f"lmdb:{tmp_path}/dst"
    fill(src + "?shard=next-to-last/2&sync=false", blocks)
    res = MigrationManager().execute_migration(
        plan_of(copy_step(transform=TransformationConfig(validators=["cid_validator"]))),
        src, dst)
    assert not res.success and res.error == "ValidationError"
    assert k.decode() in res.error_log[0] and "does not hash" in res.error_log[0]
    assert res.rollback.method == "none" and not res.rollback.performed
    assert "nothing reverted" in res.rollback.message


def test_validate_compare_finds_missing_and_different_records(tmp_path: Path) -> None:
    items = kv_items(300)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, items)
    bad = dict(items)
    bad.pop(b"/a/000000")
    bad[b"/b/000001"] = b"different"
    fill(dst, bad)
    res = MigrationManager(MigrationConfig(rollback_on_failure=False)).execute_migration(
        plan_of(MigrationStep(id="v", type="validate")), src, dst)
    assert not res.success and res.steps[0].errors == 2
    assert any("/a/000000 missing" in e for e in res.error_log)
    assert any("/b/000001 differs" in e for e in res.error_log)
    assert res.rollback is None


def interrupt_after(n_events: int) -> tuple[threading.Event, object]:
    cancel = threading.Event()
    seen = [0]

    def progress(ev: object) -> None:
        seen[0] += 1
        if seen[0] >= n_events:
            cancel.set()
    return cancel, progress


@pytest.mark.parametrize("stop_after", [1, 7, 15, 26, 38, 55])
def test_interrupted_run_resumes_to_the_same_target(tmp_path: Path, stop_after: int) -> None:
    items = kv_items(1200)
    src = f"lmdb:{tmp_path}/src"
    fill(src, items)
    plan = plan_of(
        copy_step(filters=FilterConfig(key_patterns=["/a/**", "/b/**"]),
                  transform=TransformationConfig(key_transform="add_prefix:/x",
                                                 value_transform="gzip:1")),
        MigrationStep(id="rekey", type="transform", source="target", target="target",
                      transform=TransformationConfig(key_transform="remove_prefix:/x",
                                                     value_transform="gunzip")),
        MigrationStep(id="mv", type="move", filters=FilterConfig(key_prefix="/m")),
        MigrationStep(id="check", type="validate", filters=FilterConfig(key_prefix="/a")))
    cfg = MigrationConfig(batch_size=100, checkpoint_interval=0)
    ref = MigrationManager(cfg).execute_migration(plan, src, f"lmdb:{tmp_path}/ref")
    assert ref.success
    fill(f"lmdb:{tmp_path}/src2", items)
    cancel, progress = interrupt_after(stop_after)
    first = MigrationManager(cfg).execute_migration(plan, f"lmdb:{tmp_path}/src2",
                                                    f"lmdb:{tmp_path}/dst",
                                                    progress=progress, cancel=cancel)
    assert not first.success and first.error == "Cancelled" and first.exit_code == 130
    assert first.rollback is None  # interrupted, not failed: stays resumable
    refuse = MigrationConfig(batch_size=100, resume=False)
    with pytest.raises(MigrationError, match="--resume"):
        MigrationManager(refuse).execute_migration(plan, f"lmdb:{tmp_path}/src2",
                                                   f"lmdb:{tmp_path}/dst")
    done = MigrationManager(cfg).execute_migration(plan, f"lmdb:{tmp_path}/src2",
                                                   f"lmdb:{tmp_path}/dst")
    assert done.success and done.resumed, done.error_log
    assert store_digest(f"lmdb:{tmp_path}/dst") == store_digest(f"lmdb:{tmp_path}/ref")
    assert store_digest(f"lmdb:{tmp_path}/src2") == store_digest(src)
    for a, b in zip(done.steps, ref.steps):
        assert a.counts() == b.counts(), (a, b)


def test_corrupt_journal_stops_without_stamp(tmp_path: Path) -> None:
    items = kv_items(500)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, items)
    plan = plan_of(copy_step())
    cancel, progress = interrupt_after(2)
    MigrationManager(MigrationConfig(batch_size=50, checkpoint_interval=0)).execute_migration(
        plan, src, dst, progress=progress, cancel=cancel)
    journal = tmp_path / "dst.dsmigrate" / "p.journal"
    data = journal.read_bytes()
    journal.write_bytes(data.replace(b'"records":', b'"recordz":', 1))
    with pytest.raises(JournalCorrupt, match="checksum mismatch"):
        MigrationManager().execute_migration(plan, src, dst)
    assert not (tmp_path / "dst.dsmigrate" / "p.version").exists()


def test_changed_plan_with_same_id_is_refused(tmp_path: Path) -> None:
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, kv_items(100))
    assert MigrationManager().execute_migration(plan_of(copy_step()), src, dst).success
    other = plan_of(copy_step(transform=TransformationConfig(key_transform="add_prefix:/z")))
    with pytest.raises(MigrationError, match="different steps"):
        MigrationManager().execute_migration(other, src, dst)


def test_timeout_keeps_journal_for_resume(tmp_path: Path) -> None:
    src, dst = "memory:", f"lmdb:{tmp_path}/dst"
    mem = open_datastore(src)
    mem.put_many([b"/k/%06d" % i for i in range(20000)], [b"v"] * 20000)
    slow = threading.Event()

    def progress(ev: object) -> None:
        slow.wait(0.01)
    res = MigrationManager(MigrationConfig(batch_size=10, timeout=0.2)).execute_migration(
        plan_of(copy_step()), mem, dst, progress=progress)
    assert not res.success and res.error == "Cancelled" and "timed out" in res.error_log[0]
    assert (tmp_path / "dst.dsmigrate" / "p.journal").is_file()
    res = MigrationManager(MigrationConfig(batch_size=5000)).execute_migration(
        plan_of(copy_step()), mem, dst)
    assert res.success and res.resumed and res.steps[0].written == 20000


def test_cleanup_removes_temp_keys_and_journal_after_stamp(tmp_path: Path) -> None:
    uri = f"lmdb:{tmp_path}/db"
    fill(uri, {b"/a": b"1", b"/_DSMIGRATE_S9_stale": b"x", b"/drop/me": b"2"})
    res = MigrationManager().execute_migration(
        plan_of(MigrationStep(id="c", type="cleanup", filters=FilterConfig(key_prefix="/drop"))),
        uri, uri)
    assert res.success and res.steps[0].deleted == 2
    assert records(uri) == {b"/a": b"1"}
    assert not (tmp_path / "db.dsmigrate" / "p.journal").exists()
    assert (tmp_path / "db.dsmigrate" / "p.version").exists()
    assert res.journal_path is None


def test_same_lmdb_given_twice_is_opened_once(tmp_path: Path) -> None:
    uri = f"lmdb:{tmp_path}/db"
    fill(uri, {b"/a": b"1"})
    res = MigrationManager().execute_migration(
        plan_of(MigrationStep(id="t", type="transform", source="source", target="target",
                              transform=TransformationConfig(key_transform="add_prefix:/n"))),
        uri, str(tmp_path / "db"))
    assert res.success, res.error_log
    assert records(uri) == {b"/n/a": b"1"}


def test_backup_before_archives_the_source(tmp_path: Path) -> None:
    items = kv_items(400)
    src, dst = f"leveldb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, items)
    res = MigrationManager(MigrationConfig(backup_before=True)).execute_migration(
        plan_of(copy_step()), src, dst)
    assert res.success, res.error_log
    assert res.backup_path and Path(res.backup_path).is_file()
    from dsbackup.engine.backup import BackupManager
    meta = BackupManager().inspect(res.backup_path)
    assert meta.total_keys == len(items)
    assert BackupManager().verify_backup(res.backup_path).ok


def _require_restore_layer(tmp_path: Path) -> None:
    """Skip when the backup/restore layer cannot round-trip a tiny store in this tree."""
    try:
        from dsbackup.engine.backup import BackupManager

        mem = open_datastore("memory:")
        mem.put(b"/probe", b"1")
        BackupManager().create_backup(mem, tmp_path / "probe.tar.gz")
        BackupManager().restore_backup(tmp_path / "probe.tar.gz", open_datastore("memory:"))
    except ImportError as exc:
        pytest.skip(f"backup/restore layer not complete in this tree: {exc}")


def test_rollback_restores_the_pre_migration_backup(tmp_path: Path) -> None:
    _require_restore_layer(tmp_path)
    items = kv_items(400)
    src, dst = f"leveldb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, items)
    before = store_digest(src)
    plan = plan_of(MigrationStep(id="mv", type="move", filters=FilterConfig(key_prefix="/m")),
                   MigrationStep(id="bad", type="validate", source="target", compare=False,
                                 transform=TransformationConfig(validators=["size_validator:0"])))
    res = MigrationManager(MigrationConfig(backup_before=True)).execute_migration(plan, src, dst)
    assert not res.success and res.rollback.method == "backup" and res.rollback.performed
    assert res.rollback.restored_from == res.backup_path
    assert store_digest(src) == before


def test_invalid_plan_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    bad = MigrationPlan(id="p", version="1", steps=[
        copy_step(transform=TransformationConfig(key_transform="bogus"))])
    with pytest.raises(ConfigError, match="unknown key transform"):
        MigrationManager().execute_migration(bad, f"lmdb:{tmp_path}/s", f"lmdb:{tmp_path}/d")
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


BACKEND_URIS = {
    "lmdb": "lmdb:{d}/db",
    "leveldb": "leveldb:{d}/db",
    "sqlite": "sqlite:{d}/db.sqlite",
    "flatfs": "flatfs:{d}/db?shard=next-to-last/2&sync=false",
}


@pytest.mark.parametrize("backend", sorted(BACKEND_URIS))
@pytest.mark.parametrize("stop_after", [2, 5, 9])
def test_in_place_rekey_interrupted_and_resumed_on_each_backend(
        tmp_path: Path, backend: str, stop_after: int) -> None:
    before, after = block_items(120, seed=stop_after)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref, uri = (BACKEND_URIS[backend].format(d=d) for d in (ref_dir, run_dir))
    fill(ref, before)
    fill(uri, before)
    plan = plan_of(MigrationStep(id="rekey", type="transform", source="target",
                                 target="target",
                                 transform=TransformationConfig(
                                     key_transform="cid_to_multihash",
                                     value_transform="gzip:1")))
    cfg = MigrationConfig(batch_size=16, checkpoint_interval=0)
    assert MigrationManager(cfg).execute_migration(plan, ref, ref).success
    cancel, progress = interrupt_after(stop_after)
    first = MigrationManager(cfg).execute_migration(plan, uri, uri, progress=progress,
                                                    cancel=cancel)
    assert first.error == "Cancelled"
    done = MigrationManager(cfg).execute_migration(plan, uri, uri)
    assert done.success and done.resumed, done.error_log
    import gzip
    got = records(uri)
    assert {k: gzip.decompress(v) for k, v in got.items()} == after
    assert store_digest(uri) == store_digest(ref)


def test_missing_source_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    from dsbackup.errors import DatastoreError

    with pytest.raises(DatastoreError, match="does not exist"):
        MigrationManager().execute_migration(plan_of(copy_step()), f"lmdb:{tmp_path}/typo",
                                             f"lmdb:{tmp_path}/dst")
    assert not (tmp_path / "typo").exists() and not (tmp_path / "dst").exists()


def test_failed_backup_runs_no_step_and_no_rollback(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from dsbackup.engine import backup
    from dsbackup.errors import BackupError

    def boom(self, source, path, **kw):
        raise BackupError(f"{path}: disk full")
    monkeypatch.setattr(backup.BackupManager, "create_backup", boom)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, kv_items(50))
    plan = plan_of(copy_step(), rollback=[MigrationStep(id="back", type="move",
                                                        source="target", target="source")])
    res = MigrationManager(MigrationConfig(backup_before=True)).execute_migration(plan, src, dst)
    assert not res.success and res.error == "BackupError" and "disk full" in res.error_log[0]
    assert [s.status for s in res.steps] == ["not_run"]
    assert res.rollback is not None and not res.rollback.performed
    assert records(dst) == {}
    # nothing ran, so a later run starts afresh without --resume
    res = MigrationManager(MigrationConfig(resume=False)).execute_migration(plan, src, dst)
    assert res.success


def test_a_step_that_crashes_is_one_report_line_not_a_traceback(tmp_path: Path, caplog,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    # an OSError or a bug inside a step printed its traceback on the terminal (log.exception);
    # the result names it in one line, the traceback is logged for -v only (INFO)
    import logging

    from dsbackup.migration import engine

    def boom(self):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(engine.StepRunner, "run", boom)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, kv_items(5))
    with caplog.at_level(logging.WARNING, logger="dsbackup"):
        res = MigrationManager().execute_migration(plan_of(copy_step()), src, dst)
    assert not res.success and res.exit_code == 2 and "Input/output error" in res.error_log[0]
    assert not [r for r in caplog.records if r.exc_info]


def test_an_unfinished_journal_without_a_checkpoint_says_how_far_it_got(tmp_path, run_cli):
    # a migration killed before its first checkpoint (or between steps) was refused with
    # "(journal J, step ?, phase ?)"
    from dsbackup import datasets
    from dsbackup.migration.journal import Journal
    from dsbackup.migration.plan import load_plan

    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k%02d" % i, b"v") for i in range(10)]))
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text('id = "c"\nversion = "1"\n[[steps]]\nid = "copy"\ntype = "copy"\n')
    plan = load_plan(plan_file)
    j = Journal(tmp_path / "t.dsmigrate" / "c.journal")
    j.append({"t": "begin", "plan": "c", "version": "1", "digest": plan.digest()})
    j.close()
    r = run_cli("migrate", plan_file, f"lmdb:{tmp_path / 's'}", f"lmdb:{tmp_path / 't'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "0 of 1 steps done); re-run with --resume" in r.stderr, r.stderr
    assert "?" not in r.stderr.replace("'?'", "")
    r = run_cli("migrate", plan_file, f"lmdb:{tmp_path / 's'}", f"lmdb:{tmp_path / 't'}",
                "--resume")
    assert r.returncode == 0, r.stderr


def test_an_in_place_plan_into_a_new_target_is_refused(tmp_path: Path) -> None:
    """Every step works on TARGET: between a source and a target that does not exist yet the
    source was ignored, an empty store made and the run said ok (records=0)."""
    fill(f"lmdb:{tmp_path}/src", kv_items(50))
    plan = plan_of(MigrationStep(id="z", type="transform", source="target", target="target",
                                 transform=TransformationConfig(value_transform="gzip")))
    for dry in (False, True):
        with pytest.raises(MigrationError, match="never reads its SOURCE"):
            MigrationManager(MigrationConfig(dry_run=dry)).execute_migration(
                plan, f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/new")
        assert not (tmp_path / "new").exists() and not (tmp_path / "new.dsmigrate").exists()
    # on an existing target it is the in-place plan it always was (the source unused)
    fill(f"lmdb:{tmp_path}/dst", kv_items(5))
    res = MigrationManager().execute_migration(plan, f"lmdb:{tmp_path}/src",
                                               f"lmdb:{tmp_path}/dst")
    assert res.success and res.steps[0].changed == 5
