"""What a flatfs store's size estimate costs a full backup: ``approx_count()`` and
``approx_size()`` timed with two source trees (A/B), interleaved, each in a fresh process.

Usage: python benchmarks/flatfs_sample_cost.py --old SRC --new SRC [--files N]
       [--sizes small|kubo|256k] [--rounds R] [--dir DIR] [--json FILE]

The store is ``flatfs_incremental.py``'s, its ``diskUsage.cache`` removed (so ``--new``
samples file sizes, docs/DATASTORES.md; the tree before answered None). A full backup calls
both, once, in this order (engine/full.py). Reports, per tree, the medians of wall and CPU
time of each call, the answers and the chunk size they give.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from flatfs_incremental import ensure_store, set_du_cache  # noqa: E402

CHILD = r"""
import json, sys, time
from dsbackup.datastores import open_datastore
from dsbackup.engine.config import BackupConfig
ds = open_datastore(sys.argv[1], readonly=True)
out = {}
for name in ("approx_count", "approx_size"):
    c, t = time.process_time(), time.perf_counter()
    out[name] = getattr(ds, name)()
    out[name + "_wall"], out[name + "_cpu"] = time.perf_counter() - t, time.process_time() - c
ds.close()
out["chunk_size"] = BackupConfig().resolve_chunk_size(out["approx_count"], out["approx_size"])
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--files", type=int, default=2_000_000)
    ap.add_argument("--sizes", choices=["small", "kubo", "256k"], default="small")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/flatinc-data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.dir)
    root = work / (f"flatfs-{args.files}" if args.sizes == "small"
                   else f"flatfs-{args.sizes}-{args.files}")
    ensure_store(root, args.files, args.sizes)
    set_du_cache(root, False)
    trees = {"old": args.old, "new": args.new}
    res: dict[str, list[dict]] = {t: [] for t in trees}
    load0 = os.getloadavg()
    for rnd in range(args.rounds):
        for t in (trees if rnd % 2 == 0 else list(reversed(trees))):
            p = subprocess.run([sys.executable, "-c", CHILD, f"flatfs:{root}"],
                               env=dict(os.environ, PYTHONPATH=trees[t]), check=True,
                               capture_output=True, text=True, timeout=600)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            res[t].append(r)
            print(f"round {rnd + 1} {t}: count {r['approx_count']} in "
                  f"{r['approx_count_wall']:.3f} s; size {r['approx_size']} in "
                  f"{r['approx_size_wall']:.4f} s ({r['approx_size_cpu']:.4f} s CPU); "
                  f"chunk size {r['chunk_size']}", flush=True)
    load1 = os.getloadavg()
    summary = {t: {k: round(statistics.median(r[k] for r in rs), 4)
                   for k in ("approx_count_wall", "approx_count_cpu", "approx_size_wall",
                             "approx_size_cpu")} | {"chunk_size": rs[0]["chunk_size"]}
               for t, rs in res.items()}
    print(f"\nload average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end")
    for t, s in summary.items():
        print(f"  {t}: {json.dumps(s)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "files": args.files, "sizes": args.sizes, "rounds": args.rounds,
            "loadavg_start": load0, "loadavg_end": load1, "summary": summary, "runs": res},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
