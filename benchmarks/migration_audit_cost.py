"""What the foreign-file check costs a migration of a large flatfs store.

    python benchmarks/migration_audit_cost.py [--files N] [--rounds R] [--dir DIR] [--json OUT]

A migration lists a file-per-key source once before any step runs
(``migration.preflight.refuse_foreign_files``: ``FlatfsDatastore.audit_files``, one native
listing of the shard directories), on every ``--resume`` too, and the copy step lists it
again to read its keys. This times, in interleaved rounds on one store of N files (default
500,000, values of 64 bytes, next-to-last/2 shards):

- ``audit``: ``audit_files()`` alone, in this process (wall and CPU seconds);
- ``migrate``: ``dsbackup migrate PLAN flatfs:SRC lmdb:DST --no-verify`` (one copy step) in a
  subprocess, which includes one such audit (wall and the child's CPU seconds).

The page cache is warm in both (the store was just written and is read every round), which
is the audit's best case against the migration's: cold, both read the same directories.
It prints the medians and the ratio audit / migrate.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, _SRC)

from dsbackup.datastores.flatfs import FlatfsDatastore  # noqa: E402

PLAN = """id = "audit-cost"
version = "1"
[[steps]]
id = "copy"
type = "copy"
source = "source"
target = "target"
"""


def make_store(root: Path, n: int) -> None:
    ds = FlatfsDatastore(root)  # created: SHARDING, _README; next-to-last/2
    ds.close()
    value = b"v" * 64
    made: set[str] = set()
    for i in range(n):
        key = "CIQ" + base64.b32encode(i.to_bytes(8, "big") + os.urandom(24)).decode().rstrip("=")
        shard = root / key[-3:-1]
        if key[-3:-1] not in made:
            shard.mkdir(exist_ok=True)
            made.add(key[-3:-1])
        (shard / f"{key}.data").write_bytes(value)


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="audit-cost-"))
    src = work / "src"
    if not (src / "SHARDING").exists():
        t = time.perf_counter()
        make_store(src, args.files)
        print(f"store of {args.files} files made in {time.perf_counter() - t:.1f} s", flush=True)
    plan = work / "plan.toml"
    plan.write_text(PLAN)
    env = dict(os.environ, PYTHONPATH=_SRC)
    rows: dict[str, list[tuple[float, float]]] = {"audit": [], "migrate": []}
    for r in range(args.rounds):
        ds = FlatfsDatastore(src, readonly=True)
        w0, c0 = time.perf_counter(), cpu_self()
        audit = ds.audit_files()
        rows["audit"].append((time.perf_counter() - w0, cpu_self() - c0))
        ds.close()
        assert audit.count == 0, audit
        dst = work / "dst"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(work / "state", ignore_errors=True)
        w0, c0 = time.perf_counter(), cpu_children()
        p = subprocess.run([sys.executable, "-m", "dsbackup", "migrate", str(plan),
                            f"flatfs:{src}", f"lmdb:{dst}", "--no-verify", "--state-dir",
                            str(work / "state")], env=env, capture_output=True, text=True)
        rows["migrate"].append((time.perf_counter() - w0, cpu_children() - c0))
        if p.returncode:
            sys.exit(f"migrate failed: {p.stderr}")
        print(f"round {r}: audit {rows['audit'][-1][0]:.2f} s wall / "
              f"{rows['audit'][-1][1]:.2f} s CPU; migrate {rows['migrate'][-1][0]:.2f} s wall "
              f"/ {rows['migrate'][-1][1]:.2f} s CPU", flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in rows.items()}
    out = {"files": args.files, "rounds": args.rounds, "loadavg": os.getloadavg(),
           "rows": rows, "median": med,
           "ratio_wall": med["audit"][0] / med["migrate"][0],
           "ratio_cpu": med["audit"][1] / med["migrate"][1]}
    print(f"median: audit {med['audit'][0]:.2f} s wall / {med['audit'][1]:.2f} s CPU, migrate "
          f"{med['migrate'][0]:.2f} s wall / {med['migrate'][1]:.2f} s CPU: audit / migrate = "
          f"{out['ratio_wall']:.1%} wall, {out['ratio_cpu']:.1%} CPU; load {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
