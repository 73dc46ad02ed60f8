"""Full backups of a flatfs store with two source trees (A/B), interleaved, in fresh processes.

Usage: python benchmarks/flatfs_stripes_ab.py --old SRC --new SRC [--files N]
       [--sizes small|kubo|256k] [--chunk-size auto,16] [--workers 2,1] [--rounds R] [--dir DIR] [--json FILE]

Made for the per-stripe re-listing of the parallel flatfs scan (docs/PERFORMANCE.md, "Full
backups of a flatfs store re-list it for every stripe"): ``--old`` and ``--new`` are the
``src`` directories of two checkouts (each with its built extension). The store is
``flatfs_incremental.py``'s (N blocks named as Kubo names them; ``--sizes`` as there: small
1-2 KiB blocks without ``diskUsage.cache``, or kubo / 256k blocks with one). Every round runs, for every chunk size and worker count, one full backup
with each tree (order reversed every round), each in a fresh ``python`` process, and records
its wall time and CPU time (the process, its children and the fork server's reaped workers).
The archives of the two trees are compared chunk by chunk (index digests): they must be equal.
Reports medians and new/old ratios of the medians and per round.
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
import json, os, resource, sys, time
from pathlib import Path
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.pipeline import forkserver
uri, out, cs, workers = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
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
md = BackupManager(cfg).create_backup(uri, out)
wall, used = time.perf_counter() - t, cpu() - c
with ArchiveReader(out) as r:
    digests = [e.member_xxh3 for e in r.index.entries()]
print(json.dumps({"wall": wall, "cpu": used, "mode": md.statistics.mode,
                  "chunks": len(digests), "digests": hash(tuple(digests))}))
"""


def run(src: str, uri: str, out: Path, cs: str, workers: int) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    p = subprocess.run([sys.executable, "-c", CHILD, uri, str(out), cs, str(workers)],
                       env=env, check=True, capture_output=True, text=True, timeout=1800)
    out.unlink(missing_ok=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--sizes", choices=["small", "kubo", "256k"], default="small")
    ap.add_argument("--chunk-size", default="auto,16")
    ap.add_argument("--workers", default="2,1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/flatstripes-data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / (f"blocks-{args.files}" if args.sizes == "small"
                   else f"blocks-{args.sizes}-{args.files}")
    ensure_store(root, args.files, args.sizes)
    set_du_cache(root, args.sizes != "small")
    uri = f"flatfs:{root}"
    cases = [(cs, int(w)) for cs in args.chunk_size.split(",") for w in args.workers.split(",")]
    trees = {"old": args.old, "new": args.new}
    res: dict = {f"{cs}/w{w}/{t}": [] for cs, w in cases for t in trees}
    for rnd in range(args.rounds):
        order = list(trees) if rnd % 2 == 0 else list(reversed(trees))
        for cs, w in cases:
            seen = {}
            for t in order:
                r = run(trees[t], uri, work / f"ab-{t}.dsb", cs, w)
                res[f"{cs}/w{w}/{t}"].append(r)
                seen[t] = (r["chunks"], r["digests"])
                print(f"round {rnd + 1} chunk size {cs} workers {w} {t}: {r['wall']:.2f} s, "
                      f"{r['cpu']:.2f} s CPU, {r['mode']}, {r['chunks']} chunks", flush=True)
            if seen["old"] != seen["new"]:
                print(f"ARCHIVES DIFFER: chunk size {cs}, workers {w}", flush=True)
                return 1
    print(f"\nload average at the end: {os.getloadavg()}")
    summary = {}
    for cs, w in cases:
        o, n = res[f"{cs}/w{w}/old"], res[f"{cs}/w{w}/new"]
        row = {}
        for m in ("wall", "cpu"):
            mo, mn = (statistics.median(x[m] for x in rs) for rs in (o, n))
            row[m] = {"old": round(mo, 3), "new": round(mn, 3), "ratio": round(mn / mo, 3),
                      "per_round": [round(b[m] / a[m], 3) for a, b in zip(o, n)]}
        summary[f"{cs}/w{w}"] = row
        print(f"chunk size {cs}, workers {w}: wall {row['wall']['old']} -> "
              f"{row['wall']['new']} s ({row['wall']['ratio']}x, per round "
              f"{row['wall']['per_round']}); CPU {row['cpu']['old']} -> {row['cpu']['new']} s "
              f"({row['cpu']['ratio']}x, per round {row['cpu']['per_round']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"files": args.files, "sizes": args.sizes,
                                               "rounds": args.rounds,
                                               "summary": summary, "runs": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
