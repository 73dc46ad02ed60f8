"""CPU and wall time of one short CLI command under several trees, interleaved (start-up).

Usage: python benchmarks/cli_startup_ab.py ROUNDS "ARGS" TREE [TREE ...]
e.g.   python benchmarks/cli_startup_ab.py 15 "verify --quick tiny.tar.gz" /tmp/before .
Every round runs `python -m dsbackup ARGS` with each TREE's src/ on PYTHONPATH (byte-compiled
first; PYTHONDONTWRITEBYTECODE is unset for the children), in an order reversed every other
round, and takes wall seconds and the CPU seconds (user + system) of the process and its
threads from os.wait4. An ARGS ending in lmdb:DIR (a restore) has DIR removed before each
run. Prints medians and, per tree, the median of its per-round CPU ratio to the first tree.
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

PY = sys.executable
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def main(argv: list[str]) -> None:
    rounds, args, trees = int(argv[0]), shlex.split(argv[1]), argv[2:]
    for t in trees:
        subprocess.run([PY, "-m", "compileall", "-q", f"{t}/src/dsbackup"], check=True,
                       env=ENV0)
    res: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
    for r in range(rounds):
        for t in trees if r % 2 == 0 else trees[::-1]:
            if args[-1].startswith("lmdb:"):
                shutil.rmtree(args[-1][5:], ignore_errors=True)
            t0 = time.perf_counter()
            p = subprocess.Popen([PY, "-m", "dsbackup", *args],
                                 env=dict(ENV0, PYTHONPATH=f"{t}/src"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{t}: {args}: exit {os.waitstatus_to_exitcode(status)}")
            res[t].append((wall, ru.ru_utime + ru.ru_stime))
    print(f"load average {os.getloadavg()}; {rounds} rounds; dsbackup {' '.join(args)}")
    first = res[trees[0]]
    for t in trees:
        v = res[t]
        per = statistics.median(x[1] / y[1] for x, y in zip(v, first))
        lower = sum(x[1] < y[1] for x, y in zip(v, first))
        print(f"{t}: CPU ms {1000 * statistics.median(x[1] for x in v):.1f}, wall ms "
              f"{1000 * statistics.median(x[0] for x in v):.1f}; CPU / first tree per round "
              f"{per:.3f}, lower in {lower}/{rounds}")


if __name__ == "__main__":
    main(sys.argv[1:])
