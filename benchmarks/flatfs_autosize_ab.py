"""Full and incremental backups of a flatfs store without ``diskUsage.cache``, two source trees
(A/B), interleaved, each backup in a fresh process.

Usage: python benchmarks/flatfs_autosize_ab.py --old SRC --new SRC [--files N]
       [--sizes small|kubo|256k] [--chunk-size auto|N] [--workers W] [--new-percent P]
       [--no-incremental] [--rounds R] [--dir DIR] [--json FILE]

Made for the automatic chunk size of a flatfs store without the cache (docs/PERFORMANCE.md,
"A flatfs store without `diskUsage.cache`"): ``--old`` and ``--new`` are the ``src``
directories of two checkouts (each with its built extension). The store is
``flatfs_incremental.py``'s (N blocks named as Kubo names them, ``--sizes`` as there), its
``diskUsage.cache`` removed. Each tree first makes its own parent (a full backup at
``--chunk-size``, default ``auto``: the tree decides). Then every round, with the tree order
reversed every other round:

- ``full``: a full backup with each tree;
- ``new``: P% (default 1) new blocks written (drawn as the store's, the same for both trees),
  an incremental backup against each tree's own parent; the blocks are removed after it.

Each backup records its wall time, its CPU time (the process, its children and the fork
server's reaped workers), the archive's chunk size, chunks and stored chunks. Reports
medians, new/old ratios and each tree's new/full ratio (wall and CPU, medians and per round).
With an explicit ``--chunk-size`` the two trees' full archives must be equal chunk for chunk
(``--no-incremental``: only the full rows; the cost of the size estimate itself).
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

from flatfs_incremental import ensure_store, set_du_cache, write_blocks  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.pipeline import forkserver
uri, out, cs, workers, parent = (sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                                 sys.argv[5] or None)
out.unlink(missing_ok=True)
def cpu():
    t = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        t += r.ru_utime + r.ru_stime
    pid = forkserver.server_pid()
    if pid:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        t += sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
    return t
c, t = cpu(), time.perf_counter()
cfg = BackupConfig(chunk_size=None if cs == "auto" else int(cs), workers=workers)
md = BackupManager(cfg).create_backup(uri, out, parent=parent)
wall, used = time.perf_counter() - t, cpu() - c
with ArchiveReader(out) as r:
    digests = [e.member_xxh3 for e in r.index.entries()]
    s = dict(r.summary)
    chunk_size = r.manifest["settings"]["chunk_size"]
print(json.dumps({"wall": wall, "cpu": used, "mode": md.statistics.mode,
                  "chunk_size": chunk_size, "chunks": len(digests),
                  "stored": s.get("stored_chunks"), "size": out.stat().st_size,
                  "digests": hash(tuple(digests))}))
"""


def run(src: str, uri: str, out: Path, cs: str, workers: int, parent: Path | None = None,
        keep: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    p = subprocess.run([sys.executable, "-c", CHILD, uri, str(out), cs, str(workers),
                        str(parent or "")],
                       env=env, check=True, capture_output=True, text=True, timeout=3600)
    if not keep:
        out.unlink(missing_ok=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _med(rs: list[dict], m: str) -> float:
    return statistics.median(x[m] for x in rs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--files", type=int, default=6000)
    ap.add_argument("--sizes", choices=["small", "kubo", "256k"], default="256k")
    ap.add_argument("--chunk-size", default="auto")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--new-percent", type=float, default=1.0)
    ap.add_argument("--no-incremental", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/flatinc-data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / (f"flatfs-{args.files}" if args.sizes == "small"
                   else f"flatfs-{args.sizes}-{args.files}")
    ensure_store(root, args.files, args.sizes)
    set_du_cache(root, False)
    uri = f"flatfs:{root}?max_names={2 * args.files}"
    trees = {"old": args.old, "new": args.new}
    rows = ["full"] + ([] if args.no_incremental else ["new"])
    parents: dict[str, Path] = {}
    if not args.no_incremental:
        for t, src in trees.items():
            parents[t] = work / f"autosize-parent-{t}.tar.gz"
            info = run(src, uri, parents[t], args.chunk_size, args.workers, keep=True)
            print(f"parent {t}: chunk size {info['chunk_size']}, {info['chunks']} chunks, "
                  f"{info['wall']:.1f} s", flush=True)
    load0 = os.getloadavg()
    res: dict[str, list[dict]] = {f"{r}/{t}": [] for r in rows for t in trees}
    n_new = max(1, int(args.files * args.new_percent / 100))
    try:
        for rnd in range(args.rounds):
            order = list(trees) if rnd % 2 == 0 else list(reversed(trees))
            for row in rows:
                added = (write_blocks(root, n_new, seed=1000 + rnd, keep=True,
                                      sizes=args.sizes) if row == "new" else [])
                try:
                    seen = {}
                    for t in order:
                        r = run(trees[t], uri, work / f"autosize-{t}.tar.gz", args.chunk_size,
                                args.workers, parents.get(t) if row == "new" else None)
                        res[f"{row}/{t}"].append(r)
                        seen[t] = (r["chunks"], r["digests"])
                        print(f"round {rnd + 1} {row} {t}: {r['wall']:.2f} s, {r['cpu']:.2f} s "
                              f"CPU, chunk size {r['chunk_size']}, {r['stored']} of "
                              f"{r['chunks']} chunks stored, {r['size'] / 2**20:.1f} MiB, "
                              f"{r['mode']}, load {os.getloadavg()[0]:.1f}", flush=True)
                    if row == "full" and args.chunk_size != "auto" and \
                            seen["old"] != seen["new"]:
                        print("ARCHIVES DIFFER", flush=True)
                        return 1
                finally:
                    for p in added:
                        p.unlink()
    finally:
        for p in parents.values():
            p.unlink(missing_ok=True)
    load1 = os.getloadavg()
    summary: dict = {}
    for row in rows:
        o, n = res[f"{row}/old"], res[f"{row}/new"]
        summary[row] = {m: {"old": round(_med(o, m), 3), "new": round(_med(n, m), 3),
                            "ratio": round(_med(n, m) / _med(o, m), 3),
                            "per_round": [round(b[m] / a[m], 3) for a, b in zip(o, n)]}
                        for m in ("wall", "cpu")}
    if "new" in rows:
        for t in trees:
            f, i = res[f"full/{t}"], res[f"new/{t}"]
            summary[f"new/full {t}"] = {
                m: {"median": round(_med(i, m) / _med(f, m), 3),
                    "per_round": [round(b[m] / a[m], 3) for a, b in zip(f, i)]}
                for m in ("wall", "cpu")}
    print(f"\n{args.files} blocks ({args.sizes}), no diskUsage.cache, chunk size "
          f"{args.chunk_size}, workers {args.workers}, {args.rounds} rounds; load average "
          f"{load0[0]:.1f} at the start, {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end")
    for k, v in summary.items():
        print(f"  {k:<14} " + "; ".join(f"{m} {json.dumps(x)}" for m, x in v.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "files": args.files, "sizes": args.sizes, "chunk_size": args.chunk_size,
            "workers": args.workers, "rounds": args.rounds, "new_percent": args.new_percent,
            "old": args.old, "new": args.new, "loadavg_start": load0, "loadavg_end": load1,
            "summary": summary, "runs": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
