"""A dry run writes nothing on any backend, and a copy's source is left alone: every path's
mode, size, mtime and bytes are the same before and after (LevelDB rewrites its log when
opened, SQLite in WAL mode creates side files for readers, flatfs creates .temp/ when
opened for writing: none of that may reach the stores)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dsbackup import MigrationManager, MigrationPlan, MigrationStep, TransformationConfig
from dsbackup.migration import MigrationConfig

from .helpers import block_items, fill, records


def snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            h = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size if h else None,
                                             st.st_mtime_ns, h)
    return out


STORES = {
    "lmdb": "lmdb:{d}/store",
    "flatfs": "flatfs:{d}/store?shard=next-to-last/2",
    "leveldb": "leveldb:{d}/store",
    "sqlite": "sqlite:{d}/store.db",
}


def make(kind: str, d: Path) -> tuple[str, dict[bytes, bytes]]:
    uri = STORES[kind].format(d=d)
    before, _ = block_items(60, seed=4)
    fill(uri, before)
    return uri, before


def rekey(in_place: bool) -> MigrationPlan:
    where = "target" if in_place else "source"
    return MigrationPlan(id="rk", version="1", steps=[MigrationStep(
        id="rekey", type="transform", source=where, target="target",
        transform=TransformationConfig(key_transform="cid_to_multihash",
                                       validators=["cid_validator"]))])


@pytest.mark.parametrize("kind", sorted(STORES))
def test_dry_run_writes_nothing(kind: str, tmp_path: Path) -> None:
    d = tmp_path / "stores"
    d.mkdir()
    uri, _ = make(kind, d)
    before = snapshot(tmp_path)
    cfg = MigrationConfig(dry_run=True)
    res = MigrationManager(cfg).execute_migration(rekey(True), uri, uri)
    assert res.success and res.steps[0].changed == 30, res.error_log
    res = MigrationManager(cfg).execute_migration(
        rekey(False), uri, f"flatfs:{tmp_path}/new?shard=next-to-last/2")
    assert res.success and res.steps[0].changed == 30, res.error_log
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["flatfs", "leveldb", "sqlite"])
def test_copy_source_is_left_alone(kind: str, tmp_path: Path) -> None:
    d = tmp_path / "stores"
    d.mkdir()
    uri, data = make(kind, d)
    before = snapshot(d)
    target = f"flatfs:{tmp_path}/new?shard=next-to-last/2"
    res = MigrationManager().execute_migration(rekey(False), uri, target)
    assert res.success, res.error_log
    assert len(records(target)) == len(data)
    assert snapshot(d) == before
