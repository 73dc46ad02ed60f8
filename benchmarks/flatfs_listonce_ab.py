"""Listing and backing up a flatfs store over ``max_names`` names with two source trees (A/B),
interleaved, each run in a fresh process.

Usage: python benchmarks/flatfs_listonce_ab.py --old SRC --new SRC [--files N]
       [--max-names M] [--rounds R] [--dir DIR] [--json FILE]

Made for the windowed listing of large flatfs stores (docs/PERFORMANCE.md, "A flatfs store
over max_names names is listed once"): ``--old`` and ``--new`` are the ``src`` directories of
two checkouts, each with its built extension. The store is ``flatfs_incremental.py``'s (N
blocks of 1-2 KiB named as Kubo names them, no ``diskUsage.cache``), opened as
``flatfs:DIR?max_names=M`` (default N/10: the old code lists it in ~10 windows). Every round
runs, in an order reversed each round:

- ``find``: ``find DIR -type f | wc -l`` (the listing baseline);
- ``list``: ``scan_keys()`` over the whole store (the parallel planner's listing; the central
  scan lists with the same code), old and new, and both with ``max_names`` at its default
  (all names in memory: what the spill costs, and the native in-memory listing against the
  old ``os.listdir`` one);
- ``full``: a central full backup (``workers=1``: the old parallel planner did not receive
  ``max_names``), old and new; the archives' chunk digests must be equal;
- ``incr``: an unchanged incremental against a full backup made once before the rounds.

Each run records wall time, CPU time (with its children and the fork server's workers),
peak RSS and the listing passes. Reports medians and new/old ratios (of the medians and per
round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from flatfs_incremental import ensure_store, set_du_cache  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
mode, uri, out, parent = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
def cpu():
    t = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        t += r.ru_utime + r.ru_stime
    return t
c, t = cpu(), time.perf_counter()
res = {}
if mode == "list":
    ds = open_datastore(uri, readonly=True)
    n = 0
    for ks in ds.scan_keys():
        n += len(ks)
    res = {"keys": n, "passes": ds.listing_passes}
else:
    out.unlink(missing_ok=True)
    cfg = BackupConfig(workers=1)
    BackupManager(cfg).create_backup(uri, out, parent=Path(parent) if parent else None)
    with ArchiveReader(out) as r:
        digests = [e.member_xxh3 for e in r.index.entries()]
    res = {"chunks": len(digests), "digests": hash(tuple(digests))}
res.update(wall=time.perf_counter() - t, cpu=cpu() - c,
           rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(res))
"""


def run(src: str, mode: str, uri: str, out: Path, parent: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    p = subprocess.run([sys.executable, "-c", CHILD, mode, uri, str(out),
                        str(parent) if parent else ""],
                       env=env, check=True, capture_output=True, text=True, timeout=3600)
    return json.loads(p.stdout.strip().splitlines()[-1])


def find(root: Path) -> dict:
    t = time.perf_counter()
    c0 = os.times()
    subprocess.run(f"find '{root}' -type f | wc -l", shell=True, check=True,
                   capture_output=True)
    c1 = os.times()
    return {"wall": time.perf_counter() - t,
            "cpu": (c1.children_user + c1.children_system) - (c0.children_user
                                                            + c0.children_system)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--files", type=int, default=300_000)
    ap.add_argument("--max-names", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/flatlistonce-data")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated store")
    args = ap.parse_args(argv)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"blocks-{args.files}"
    ensure_store(root, args.files, "small")
    set_du_cache(root, False)
    m = args.max_names or max(1, args.files // 10)
    plain, limited = f"flatfs:{root}", f"flatfs:{root}?max_names={m}"
    parent = work / "parent.dsb"
    run(args.new, "full", plain, parent)
    runs = [("find", None, None), ("list", "old", limited), ("list", "new", limited),
            ("list", "new-in-memory", plain), ("list", "old-in-memory", plain),
            ("full", "old", limited),
            ("full", "new", limited), ("incr", "old", limited), ("incr", "new", limited)]
    trees = {"old": args.old, "new": args.new, "new-in-memory": args.new,
             "old-in-memory": args.old}
    res: dict = {f"{mode}/{t}": [] for mode, t, _ in runs}
    for rnd in range(args.rounds):
        order = runs if rnd % 2 == 0 else list(reversed(runs))
        digests = {}
        for mode, t, uri in order:
            if mode == "find":
                r = find(root)
            else:
                r = run(trees[t], "full" if mode == "incr" else mode, uri,
                        work / f"ab-{mode}-{t}.dsb", parent if mode == "incr" else None)
                (work / f"ab-{mode}-{t}.dsb").unlink(missing_ok=True)
                if mode == "full":
                    digests[t] = (r["chunks"], r["digests"])
            res[f"{mode}/{t}"].append(r)
            extra = f", {r['passes']} passes" if "passes" in r else ""
            rss = f", {r['rss_mib']:.0f} MiB RSS" if "rss_mib" in r else ""
            print(f"round {rnd + 1} {mode} {t or ''}: {r['wall']:.2f} s, {r['cpu']:.2f} s CPU"
                  f"{extra}{rss}", flush=True)
        if digests["old"] != digests["new"]:
            print("ARCHIVES DIFFER", flush=True)
            return 1
    print(f"\n{args.files} files, max_names {m}, load average at the end: {os.getloadavg()}")
    summary: dict = {}

    def med(key: str, what: str) -> float:
        return statistics.median(x[what] for x in res[key])

    for key in res:
        summary[key] = {w: round(med(key, w), 3) for w in ("wall", "cpu", "rss_mib", "passes")
                        if w in res[key][0]}
    for a, b in (("list/old", "list/new"), ("list/new-in-memory", "list/new"),
                 ("list/old-in-memory", "list/new-in-memory"),
                 ("full/old", "full/new"), ("incr/old", "incr/new"), ("find/None", "list/new")):
        row = {}
        for w in ("wall", "cpu"):
            row[w] = {"ratio": round(med(b, w) / med(a, w), 3),
                      "per_round": [round(y[w] / x[w], 3) for x, y in zip(res[a], res[b])]}
        summary[f"{b} / {a}"] = row
        print(f"{b} / {a}: wall {row['wall']['ratio']} (per round {row['wall']['per_round']}), "
              f"CPU {row['cpu']['ratio']} (per round {row['cpu']['per_round']})")
    for key, v in summary.items():
        if "/" in key and " / " not in key:
            print(f"{key}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps({"files": args.files, "max_names": m,
                                               "rounds": args.rounds, "summary": summary,
                                               "runs": res}, indent=1))
    parent.unlink(missing_ok=True)
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        (root.parent / f".{root.name}.complete").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
