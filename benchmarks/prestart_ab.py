"""Interleaved A/B of `dsbackup backup` with the workers' fork server started early
(DSBACKUP_PRESTART=1) and on demand (=0), in one run.

Usage: python benchmarks/prestart_ab.py [--rounds 7] [--work-dir DIR]
Cases: the blocks and small stores (benchdata.py, DSBACKUP_BENCH_SCALE) with all CPUs as
workers, and with 8+ CPUs the same under `taskset -c 0-3` with 4 workers. Each round runs
both settings of every case, in alternating order, the store read into the page cache first;
prints the medians, their ratio (below 1: prestart is faster) and how many pairs it won.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from compare import measure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    import benchdata

    cpus = os.cpu_count() or 1
    stores = [("blocks", benchdata.blocks_lmdb()), ("small", benchdata.small_lmdb())]
    cases = [(name, d, cpus, None) for name, d in stores]
    if cpus >= 8:
        cases += [(f"{name}@4cpu", d, 4, "0-3") for name, d in stores]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    times: dict[tuple[str, str], list[float]] = {(c[0], v): [] for c in cases for v in "10"}
    work = Path(tempfile.mkdtemp(prefix="dsbackup-prestart-", dir=args.work_dir))
    try:
        arc = work / "ab.tar.gz"
        for r in range(args.rounds):
            for name, d, n, cpuset in cases:
                for v in ("1", "0") if r % 2 == 0 else ("0", "1"):
                    cmd = [sys.executable, "-m", "dsbackup", "backup", "--workers", str(n),
                           d.uri, str(arc)]
                    if cpuset:
                        cmd = ["taskset", "-c", cpuset, *cmd]
                    s = measure(cmd, dict(env, DSBACKUP_PRESTART=v), 600, output=arc,
                                inputs=(d.path,))
                    times[(name, v)].append(s.seconds)
            print(f"round {r + 1} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{cpus} CPUs, {args.rounds} rounds; prestart against on demand (below 1: faster)")
    for name, *_ in cases:
        on, off = times[(name, "1")], times[(name, "0")]
        pairs = [a / b for a, b in zip(on, off)]
        print(f"{name:12} prestart {statistics.median(on):.3f} s  on demand "
              f"{statistics.median(off):.3f} s  ratio {statistics.median(on) / statistics.median(off):.3f}"
              f"  pairwise {statistics.median(pairs):.3f}  wins {sum(p < 1 for p in pairs)}/{len(pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
