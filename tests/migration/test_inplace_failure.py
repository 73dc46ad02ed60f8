"""A failed in-place transform leaves the store as it was (issue 20, item 6): 20,000 gzip
values with one bad value at #15,999, gunzip in place, batch size 1000. The staged temp keys
(/_DSMIGRATE_*) are removed, the error names the key and counts it, and a rerun after the
value is fixed succeeds."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from .helpers import fill, records, store_digest

PLAN = """
id = "gunzip-inplace"
version = "1"

[[steps]]
id = "gunzip"
type = "transform"
source = "target"
target = "target"
transform = { value_transform = "gunzip" }
"""

N, BAD = 20_000, 15_999


def _items() -> dict[bytes, bytes]:
    items = {b"/v/%06d" % i: gzip.compress(b"value %d" % i, mtime=0) for i in range(N)}
    items[b"/v/%06d" % BAD] = b"not gzip at all"
    return items


@pytest.mark.parametrize("scheme", ["lmdb", "sqlite"])
def test_failed_inplace_gunzip_reverts_its_staging(tmp_path: Path, run_cli, scheme) -> None:
    (tmp_path / "plan.toml").write_text(PLAN)
    uri = f"{scheme}:{tmp_path}/s" + (".db" if scheme == "sqlite" else "")
    fill(uri, _items())
    before = store_digest(uri)
    r = run_cli("migrate", tmp_path / "plan.toml", uri, uri, "--batch-size", "1000", "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    step = out["steps"][0]
    assert step["status"] == "failed" and step["errors"] == 1
    bad_key = f"/v/{BAD:06d}"
    assert bad_key in step["message"] and bad_key in " ".join(out["error_log"])
    assert "staged" in step["message"]
    got = records(uri)
    assert not [k for k in got if k.startswith(b"/_DSMIGRATE")]
    assert len(got) == N and store_digest(uri) == before  # exactly as before
    # fix the value: a plain rerun (no --resume needed) finishes
    fill(uri, {b"/v/%06d" % BAD: gzip.compress(b"value %d" % BAD, mtime=0)})
    r = run_cli("migrate", tmp_path / "plan.toml", uri, uri, "--batch-size", "1000")
    assert r.returncode == 0, r.stderr
    got = records(uri)
    assert got == {b"/v/%06d" % i: b"value %d" % i for i in range(N)}


def test_failure_after_staging_keeps_the_journal_for_resume(tmp_path: Path,
                                                            monkeypatch) -> None:
    """A failure once originals are being replaced (apply phase) cannot be undone by the step;
    the journal is then kept, so --resume finishes the step and leaves no temp key."""
    from dsbackup import MigrationConfig, MigrationManager
    from dsbackup.datastores.lmdb import LmdbDatastore
    from dsbackup.errors import DatastoreError
    from dsbackup.migration.plan import load_plan

    (tmp_path / "plan.toml").write_text(PLAN)
    uri = f"lmdb:{tmp_path}/s"
    items = {k: v for k, v in _items().items() if k != b"/v/%06d" % BAD}
    fill(uri, dict(list(items.items())[:3000]))
    calls = {"n": 0}
    real = LmdbDatastore.put_many

    def flaky(self, keys, values):
        if keys and not keys[0].startswith(b"/_DSMIGRATE"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise DatastoreError(f"{self.path}: no space left on device (test)")
        return real(self, keys, values)

    monkeypatch.setattr(LmdbDatastore, "put_many", flaky)
    cfg = MigrationConfig(batch_size=1000, checkpoint_interval=0)
    res = MigrationManager(cfg).execute_migration(load_plan(tmp_path / "plan.toml"), uri, uri)
    assert not res.success and res.error == "DatastoreError"
    assert "resume" in res.rollback.message
    monkeypatch.setattr(LmdbDatastore, "put_many", real)
    res = MigrationManager(cfg.with_overrides({"resume": True})).execute_migration(
        load_plan(tmp_path / "plan.toml"), uri, uri)
    assert res.success, res.error_log
    got = records(uri)
    assert got == {k: gzip.decompress(v) for k, v in list(items.items())[:3000]}
