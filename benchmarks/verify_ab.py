"""Deep verify of small records against `zstd -t`, trees interleaved (issue #21 item 2).

Usage: python benchmarks/verify_ab.py ROUNDS TAR_ZST ARCHIVE[,ARCHIVE...] TREE [TREE ...]
Every round runs, in an order reversed every other round, `python -m dsbackup verify ARCHIVE`
(deep, the default) of each archive under each TREE (its src/ on PYTHONPATH, byte-compiled
first) and `zstd -q -t TAR_ZST` (the same store as `tar | zstd`), each under `perf stat -e
task-clock`: wall seconds and the CPU seconds of the whole process (threads included). Prints
the medians and, per row, zstd -t's time over ours (>= 1: as fast as zstd -t or faster) by the
medians and the median of per-round ratios. Archives and TAR_ZST are read once first (warm).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

PY = sys.executable
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    p = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", *cmd], env=env,
                       capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    line = next(x for x in p.stderr.splitlines() if "task-clock" in x)
    return wall, float(line.split(",")[0]) / 1000


def main(argv: list[str]) -> None:
    rounds, tzst, archives, trees = int(argv[0]), argv[1], argv[2].split(","), argv[3:]
    for tree in trees:
        subprocess.run([PY, "-m", "compileall", "-q", f"{tree}/src/dsbackup"], check=True,
                       env=ENV0)
    for f in [tzst, *archives]:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    rows: dict[str, tuple[list[str], dict[str, str]]] = {"zstd -t": (["zstd", "-q", "-t", tzst],
                                                                       ENV0)}
    for tree in trees:
        for a in archives:
            rows[f"{tree} {os.path.basename(a)}"] = (
                [PY, "-m", "dsbackup", "verify", a], dict(ENV0, PYTHONPATH=f"{tree}/src"))
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    names = list(rows)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            res[k].append(_timed(*rows[k]))
    print(f"load average {os.getloadavg()}; {rounds} rounds")
    for i, what in ((1, "CPU s"), (0, "wall s")):
        base = [x[i] for x in res["zstd -t"]]
        mb = statistics.median(base)
        print(f"-- {what}; zstd -t: median {mb:.3f}")
        for k in names[1:]:
            v = [x[i] for x in res[k]]
            m = statistics.median(v)
            per = statistics.median(b / x for b, x in zip(base, v))
            print(f"{k}: median {m:.3f}  zstd -t / ours {mb / m:.3f} (per round {per:.3f})  "
                  f"{[round(x, 3) for x in v]}")


if __name__ == "__main__":
    main(sys.argv[1:])
