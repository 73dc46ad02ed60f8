"""The plans shown in docs/MIGRATION.md load, validate and do what the text says."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from dsbackup import MigrationManager, MigrationPlan

from .helpers import block_items, fill, records

DOC = Path(__file__).resolve().parents[2] / "docs" / "MIGRATION.md"


def doc_plans() -> list[MigrationPlan]:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    return [MigrationPlan.from_dict(tomllib.loads(b), origin="docs/MIGRATION.md")
            for b in blocks]


def test_every_documented_plan_is_valid() -> None:
    plans = doc_plans()
    assert [p.id for p in plans] == ["blocks-to-multihash", "kubo-11-to-12"]


def test_first_documented_plan_runs_and_rolls_back(tmp_path: Path) -> None:
    plan = doc_plans()[0]
    before, after = block_items(80, seed=9)
    src = f"flatfs:{tmp_path}/old?shard=next-to-last/2&sync=false"
    dst = f"flatfs:{tmp_path}/new?shard=next-to-last/2&sync=false"
    fill(src, before)
    mgr = MigrationManager()
    res = mgr.execute_migration(plan, src, dst)
    assert res.success, res.error_log
    assert records(dst) == after
    rb = mgr.rollback_migration(plan, src, dst)
    assert rb.success and rb.rollback.steps[0].deleted == len(after)
    assert records(dst) == {} and records(src) == before


def test_documented_kubo_plan_is_the_shipped_one() -> None:
    from dsbackup.migration.shipped import shipped_plan

    doc = doc_plans()[1]
    shipped = shipped_plan("kubo-11-to-12")
    assert doc.to_dict() == shipped.to_dict() and doc.digest() == shipped.digest()
