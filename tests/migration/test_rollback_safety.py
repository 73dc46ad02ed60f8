"""Rollback never loses data (issue 20, item 1): the pre-migration archive is verified
completely before anything is touched, restored into a staging store and swapped in only
after success; a store no step modified is left alone; a failed rollback leaves the source
exactly as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .helpers import fill, kv_items, records, store_digest

COPY_PLAN = """
id = "copy-x"
version = "1"

[[steps]]
id = "copy"
type = "copy"
"""

MOVE_PLAN = """
id = "move-x"
version = "1"

[[steps]]
id = "move"
type = "move"
filters = { key_prefix = "/m" }
"""


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "bitflip":
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))


def _migrate(tmp_path: Path, run_cli, plan: str, scheme: str = "lmdb"):
    (tmp_path / "plan.toml").write_text(plan)
    src = f"{scheme}:{tmp_path}/src" + (".db" if scheme == "sqlite" else "")
    dst = f"lmdb:{tmp_path}/dst"
    items = kv_items(900)
    fill(src, items)
    r = run_cli("migrate", tmp_path / "plan.toml", src, dst, "--backup-before", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    backup = Path(json.loads(r.stdout)["backup_path"])
    assert backup.is_file() and backup.parent == tmp_path / "dst.dsmigrate"
    return src, dst, backup, items


@pytest.mark.parametrize("how", ["deleted", "truncated", "bitflip", "intact"])
def test_rollback_of_a_copy_leaves_the_source_alone(tmp_path, run_cli, how):
    src, dst, backup, items = _migrate(tmp_path, run_cli, COPY_PLAN)
    before = store_digest(src)
    _damage(backup, how)
    r = run_cli("migrate", tmp_path / "plan.toml", src, dst, "--rollback", "--json")
    assert "Traceback" not in r.stderr
    # nothing reverted (a copy never wrote the source): exit 1 "nothing to roll back" (#22)
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    rb = out["rollback"]
    assert "left" in rb["message"] and rb["stamp_removed"] and not rb["performed"]
    assert store_digest(src) == before  # 900 records, the same content
    assert len(records(src)) == 900


@pytest.mark.parametrize("how,code", [("deleted", 2), ("truncated", 3), ("bitflip", 3)])
@pytest.mark.parametrize("scheme", ["lmdb", "sqlite"])
def test_rollback_with_a_bad_archive_leaves_the_source_exactly(tmp_path, run_cli, how, code,
                                                               scheme):
    src, dst, backup, items = _migrate(tmp_path, run_cli, MOVE_PLAN, scheme)
    moved = {k for k in items if k.startswith(b"/m/")}
    assert set(records(src)) == set(items) - moved
    before = store_digest(src)
    _damage(backup, how)
    r = run_cli("migrate", tmp_path / "plan.toml", src, dst, "--rollback", "--json")
    assert "Traceback" not in r.stderr
    assert r.returncode == code, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert "left as it is" in out["rollback"]["message"], out["rollback"]
    assert store_digest(src) == before  # not emptied, not half restored
    # the stamp stays: the target is still migrated, and --rollback can be tried again
    stamp = tmp_path / "dst.dsmigrate" / "move-x.version"
    assert stamp.is_file()
    assert not [p for p in tmp_path.iterdir() if "dsmigrate-rollback" in p.name]


@pytest.mark.parametrize("scheme", ["lmdb", "sqlite", "flatfs", "leveldb"])
def test_rollback_with_a_good_archive_restores_exactly(tmp_path, run_cli, scheme):
    plan = MOVE_PLAN
    if scheme == "flatfs":  # flatfs keys have no namespaces to filter on: move them all
        plan = plan.replace('filters = { key_prefix = "/m" }\n', "")
    (tmp_path / "plan.toml").write_text(plan)
    src = {"lmdb": f"lmdb:{tmp_path}/src", "sqlite": f"sqlite:{tmp_path}/src.db",
           "flatfs": f"flatfs:{tmp_path}/src", "leveldb": f"leveldb:{tmp_path}/src"}[scheme]
    dst = f"lmdb:{tmp_path}/dst"
    items = ({f"/{'MA'[i % 2]}{i:05d}".encode(): os.urandom(i % 90) for i in range(400)}
             if scheme == "flatfs" else kv_items(900))
    fill(src, items)
    before = store_digest(src)
    r = run_cli("migrate", tmp_path / "plan.toml", src, dst, "--backup-before")
    assert r.returncode == 0, r.stderr
    assert store_digest(src) != before
    r = run_cli("migrate", tmp_path / "plan.toml", src, dst, "--rollback", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rb = json.loads(r.stdout)["rollback"]
    assert rb["method"] == "backup" and rb["performed"] and rb["restored_records"] == len(items)
    assert store_digest(src) == before
    leftovers = [p.name for p in tmp_path.iterdir() if "dsmigrate-" in p.name
                 or p.name.endswith(".dsbackup.lock")]
    assert leftovers == []


def test_failed_step_rolls_back_only_what_it_touched(tmp_path):
    """A failing copy-then-validate run with a backup: the copy never touched the source,
    so the automatic rollback leaves it alone (even if its archive were bad)."""
    from dsbackup import MigrationConfig, MigrationManager, MigrationPlan, MigrationStep
    from dsbackup.migration.plan import TransformationConfig

    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, kv_items(300))
    before = store_digest(src)
    plan = MigrationPlan(id="p", version="1", steps=[
        MigrationStep(id="copy", type="copy"),
        MigrationStep(id="bad", type="validate", source="target", compare=False,
                      transform=TransformationConfig(validators=["size_validator:0"]))])
    res = MigrationManager(MigrationConfig(backup_before=True)).execute_migration(plan, src, dst)
    assert not res.success
    assert not res.rollback.performed and "left" in res.rollback.message
    assert store_digest(src) == before


def test_a_failing_staged_restore_leaves_the_source_exactly(tmp_path, run_cli, monkeypatch):
    """The archive is fine but restoring it fails (say the disk fills up): the staging store
    is removed, the source is not touched, the stamp stays for another --rollback."""
    import dsbackup.engine.restore
    from dsbackup import MigrationManager
    from dsbackup.errors import DatastoreError
    from dsbackup.migration.plan import load_plan

    src, dst, backup, items = _migrate(tmp_path, run_cli, MOVE_PLAN)
    before = store_digest(src)
    real = dsbackup.engine.restore.restore_archive

    def failing(archive, target, **kw):
        real(archive, target, **kw)  # everything written into the staging store, then:
        raise DatastoreError(f"{target}: no space left on /x (test)")
    monkeypatch.setattr(dsbackup.engine.restore, "restore_archive", failing)
    res = MigrationManager().rollback_migration(load_plan(tmp_path / "plan.toml"), src, dst)
    assert not res.success and res.exit_code == 2
    assert "no space left" in res.rollback.message
    assert store_digest(src) == before
    assert not [p for p in tmp_path.iterdir() if "dsmigrate-" in p.name]
    assert (tmp_path / "dst.dsmigrate" / "move-x.version").is_file()
    monkeypatch.setattr(dsbackup.engine.restore, "restore_archive", real)
    res = MigrationManager().rollback_migration(load_plan(tmp_path / "plan.toml"), src, dst)
    assert res.success and res.rollback.performed
    assert records(src) == items
