"""zstd against gzip chunks (``backup --codec zstd``, docs/FORMAT.md §11.6): backup, restore
and deep verify of the same store, interleaved, medians, ratios; and the archives' sizes.

Usage: python benchmarks/codec_ab.py [--datasets blocks,small] [--rounds 5] [--workers 2]
       [--json FILE]

Each row is a ``python -m dsbackup`` child timed for wall time and CPU time (user + system of
the child and of every process it started, waited for here as their subreaper; see
encryption_cost.py, whose runner this uses). CPU time is the steadier number on a shared
machine. Every round runs gzip, zstd (the order reversed every other round) for each
operation; each round's zstd/gzip ratio is taken from rows that ran next to each other.
Data sets: benchdata.py (scale with DSBACKUP_BENCH_SCALE).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from encryption_cost import _subreaper, run  # noqa: E402

CODECS = ("gzip", "zstd")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="blocks,small")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import benchdata

    if not _subreaper():
        print("not a subreaper: CPU times leave out the worker processes", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="dsbackup-codec-"))
    py = [sys.executable, "-m", "dsbackup"]
    w = ["--workers", str(args.workers)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    # byte-compiled as an installed package is, even where PYTHONDONTWRITEBYTECODE is set
    compileall.compile_dir(str(ROOT / "src" / "dsbackup"), quiet=1)
    results: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "scale": benchdata.scale(), "workers": args.workers,
                     "rounds": args.rounds, "loadavg_start": os.getloadavg(), "datasets": {}}
    try:
        for name in args.datasets.split(","):
            d = benchdata.blocks_lmdb() if name == "blocks" else benchdata.small_lmdb()
            arc = {c: work / f"{name}-{c}.tar.gz" for c in CODECS}
            dst = work / f"{name}-restored"
            ops = {
                "backup": {c: (py + ["backup", *w, "--codec", c, d.uri, str(arc[c])], arc[c])
                           for c in CODECS},
                "restore": {c: (py + ["restore", *w, str(arc[c]), f"lmdb:{dst}"], dst)
                            for c in CODECS},
                "verify": {c: (py + ["verify", *w, str(arc[c])], None) for c in CODECS},
            }
            samples = {(op, c): [] for op in ops for c in CODECS}
            sizes = {}
            for r in range(args.rounds):
                order = CODECS if r % 2 == 0 else CODECS[::-1]
                for op, rows in ops.items():
                    if op == "restore":  # untimed: see encryption_cost.py (page cache)
                        shutil.rmtree(dst, ignore_errors=True)
                        run(rows[order[0]][0], env)
                    for c in order:
                        cmd, out = rows[c]
                        if out is not None:
                            shutil.rmtree(out, ignore_errors=True) if out.is_dir() \
                                else out.unlink(missing_ok=True)
                        samples[(op, c)].append(run(cmd, env))
                        wall, cpu = samples[(op, c)][-1]
                        print(f"  round {r + 1}: {name:6} {op:7} {c:4} {wall:7.3f} s wall "
                              f"{cpu:7.3f} s CPU", file=sys.stderr, flush=True)
                    if op == "backup":
                        sizes = {c: arc[c].stat().st_size for c in CODECS}
                shutil.rmtree(dst, ignore_errors=True)
            out: dict = {"records": d.records, "raw_bytes": d.raw_bytes, "sizes": sizes,
                         "size_ratio_zstd_over_gzip": sizes["zstd"] / sizes["gzip"],
                         "rows": {}, "ratios": {}}
            for (op, c), s in samples.items():
                out["rows"][f"{op} {c}"] = {
                    "wall": statistics.median(x for x, _ in s),
                    "cpu": statistics.median(x for _, x in s),
                    "wall_all": [x for x, _ in s], "cpu_all": [x for _, x in s]}
            for op in ops:
                a, b = samples[(op, "zstd")], samples[(op, "gzip")]
                for i, what in ((0, "wall"), (1, "cpu")):
                    per = [x[i] / y[i] for x, y in zip(a, b)]
                    out["ratios"][f"{op} zstd/gzip {what}"] = {
                        "median_of_rounds": statistics.median(per),
                        "of_medians": statistics.median(x[i] for x in a)
                        / statistics.median(y[i] for y in b),
                        "per_round": per}
            results["datasets"][name] = out
            print(f"{name:6} archive size zstd/gzip {out['size_ratio_zstd_over_gzip']:.3f} "
                  f"({sizes['zstd']} / {sizes['gzip']} bytes)")
            for label, row in out["rows"].items():
                print(f"{name:6} {label:16} {row['wall']:8.3f} s wall {row['cpu']:8.3f} s CPU")
            for k, v in out["ratios"].items():
                print(f"{name:6} {k:26} {v['of_medians']:.3f} (median of rounds "
                      f"{v['median_of_rounds']:.3f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print(f"load average: start {results['loadavg_start']}, end {results['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
