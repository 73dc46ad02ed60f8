"""Benchmark: migration copy step LMDB -> LMDB on the small-records dataset.

    python benchmarks/bench_migration.py [--records N] [--json OUT] [--keep DIR]

The dataset is ``dsbackup.datasets.iter_small`` (~50-byte keys, 100-300-byte values):
2,000,000 records scaled by ``DSBACKUP_BENCH_SCALE`` (default 1). Scenarios, each timed once
in this run on the same data:

- ``copy``: one copy step, no transform or filter, ``verify_migration`` off: whole batches
  pass from ``scan_batches`` to ``put_many`` with no per-record Python work;
- ``copy+verify``: the same with the post-copy comparison on (what a default run does);
- ``raw-py-lmdb``: a bare py-lmdb cursor -> ``putmulti`` loop outside dsbackup, the floor
  for any copy through py-lmdb, to show what the migration layer itself costs;
- ``backup+restore``: ``BackupManager.create_backup`` then ``restore_backup`` of the same
  source into a fresh LMDB, when the backup layer is available; the ratio of the copy rate
  to this one is printed.

Results print as text and, with ``--json``, are written as JSON for comparison across versions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, _SRC)
# worker processes of the backup pipeline (spawn/forkserver) must import this tree too
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p)

from dsbackup import (  # noqa: E402
    MigrationConfig,
    MigrationManager,
    MigrationPlan,
    MigrationStep,
)
from dsbackup.datasets import iter_small, write_lmdb  # noqa: E402

BASE_RECORDS = 2_000_000


def _copy(src: str, dst: str, verify: bool) -> dict[str, Any]:
    plan = MigrationPlan(id="bench", version="1",
                         steps=[MigrationStep(id="copy", type="copy")])
    cfg = MigrationConfig(batch_size=20_000, verify_migration=verify)
    t0 = time.perf_counter()
    res = MigrationManager(cfg).execute_migration(plan, src, dst)
    dt = time.perf_counter() - t0
    if not res.success:
        raise SystemExit(f"migration failed: {res.error}: {res.error_log[:3]}")
    step = res.steps[0]
    return {"records": step.written, "bytes": step.bytes, "seconds": round(dt, 4),
            "records_per_s": round(step.written / dt), "step_seconds": round(step.duration_s, 4)}


def _raw_py_lmdb(src_dir: Path, dst_dir: Path, n: int) -> dict[str, Any]:
    """The floor for any copy through py-lmdb: cursor tuples into putmulti, nothing else
    (no journal, no checkpoints, no counting), then one forced sync."""
    import itertools

    import lmdb

    src = lmdb.open(str(src_dir), readonly=True, lock=False)
    dst = lmdb.open(str(dst_dir), map_size=1 << 40, sync=False)
    try:
        t0 = time.perf_counter()
        with src.begin() as rt:
            it = rt.cursor().iternext()
            while True:
                chunk = list(itertools.islice(it, 20_000))
                if not chunk:
                    break
                with dst.begin(write=True) as wt:
                    wt.cursor().putmulti(chunk, append=True)
        dst.sync(True)
        dt = time.perf_counter() - t0
    finally:
        src.close()
        dst.close()
    return {"records": n, "seconds": round(dt, 4), "records_per_s": round(n / dt)}


def _backup_restore(src: str, work: Path) -> dict[str, Any] | None:
    try:
        from dsbackup.engine.backup import BackupManager
        from dsbackup.engine.config import BackupConfig
    except ImportError as exc:
        return {"skipped": f"backup layer unavailable: {exc}"}
    mgr = BackupManager(BackupConfig())
    archive = work / "bench.tar.gz"
    try:
        t0 = time.perf_counter()
        meta = mgr.create_backup(src, archive)
        t1 = time.perf_counter()
        mgr.restore_backup(archive, f"lmdb:{work}/restored")
        t2 = time.perf_counter()
    except ImportError as exc:
        return {"skipped": f"backup/restore layer incomplete: {exc}"}
    except Exception as exc:  # noqa: BLE001 - report, do not hide the copy numbers
        return {"skipped": f"backup/restore failed: {type(exc).__name__}: {exc}"}
    n = meta.total_keys
    return {"records": n, "backup_seconds": round(t1 - t0, 4),
            "restore_seconds": round(t2 - t1, 4), "seconds": round(t2 - t0, 4),
            "records_per_s": round(n / (t2 - t0))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scale = float(os.environ.get("DSBACKUP_BENCH_SCALE", "1"))
    ap.add_argument("--records", type=int, default=max(1000, int(BASE_RECORDS * scale)))
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-migration-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"benchmark": "migration-copy-lmdb-lmdb", "dataset": "small",
                           "records": args.records, "scenarios": {}}
    try:
        src = f"lmdb:{work}/src"
        t0 = time.perf_counter()
        n, nbytes = write_lmdb(str(work / "src"), iter_small(args.records), sort=False,
                               batch=50_000)
        out["dataset_bytes"] = nbytes
        print(f"dataset: {n:,} records, {nbytes / 1e6:.1f} MB "
              f"(generated in {time.perf_counter() - t0:.1f}s)")
        sc = out["scenarios"]
        sc["copy"] = _copy(src, f"lmdb:{work}/dst1", verify=False)
        print(f"copy:           {sc['copy']['records_per_s']:>12,} records/s "
              f"({sc['copy']['seconds']:.2f}s)")
        sc["copy+verify"] = _copy(src, f"lmdb:{work}/dst2", verify=True)
        print(f"copy+verify:    {sc['copy+verify']['records_per_s']:>12,} records/s "
              f"({sc['copy+verify']['seconds']:.2f}s)")
        sc["raw-py-lmdb"] = _raw_py_lmdb(work / "src", work / "raw", n)
        print(f"raw py-lmdb:    {sc['raw-py-lmdb']['records_per_s']:>12,} records/s "
              f"({sc['raw-py-lmdb']['seconds']:.2f}s; the floor for a py-lmdb copy)")
        shutil.rmtree(work / "raw", ignore_errors=True)
        shutil.rmtree(work / "dst1", ignore_errors=True)
        shutil.rmtree(work / "dst2", ignore_errors=True)
        br = _backup_restore(src, work)
        sc["backup+restore"] = br
        if br and "records_per_s" in br:
            ratio = sc["copy"]["records_per_s"] / br["records_per_s"]
            out["copy_vs_backup_restore"] = round(ratio, 3)
            print(f"backup+restore: {br['records_per_s']:>12,} records/s ({br['seconds']:.2f}s:"
                  f" backup {br['backup_seconds']:.2f}s, restore {br['restore_seconds']:.2f}s)")
            print(f"ratio copy / (backup+restore): {ratio:.2f}x")
        else:
            print(f"backup+restore: skipped ({(br or {}).get('skipped')})")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
