"""CPU and wall time of one short CLI command under several trees, interleaved (start-up).

Usage: python benchmarks/cli_startup_ab.py [--script] [--json FILE] ROUNDS "ARGS" TREE [TREE ...]
e.g.   python benchmarks/cli_startup_ab.py 15 "verify --quick tiny.tar.gz" /tmp/before .
Every round runs `python -m dsbackup ARGS` (with --script: what pip's `dsbackup` console
script runs, `from dsbackup.cli._entry import run`) with each TREE's src/ on PYTHONPATH
(byte-compiled first; PYTHONDONTWRITEBYTECODE is unset for the children), in an order
reversed every other round, and takes wall seconds and the CPU seconds (user + system) of the
process and its threads and reaped children (the workers and their zygote) from os.wait4. An
ARGS ending in lmdb:DIR (a restore) has DIR removed before each run, a `backup` its archive
(the last argument). ``AB_CHRT=10`` runs the commands under ``chrt -f 10`` (SCHED_FIFO, root:
other load does not preempt them). Prints medians and, per tree, the medians of its per-round
CPU and wall ratios to the first tree; --json writes every round's numbers.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

PY = sys.executable
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
SCRIPT = ("import sys\nfrom dsbackup.cli._entry import run\nsys.argv[0] = 'dsbackup'\n"
          "sys.exit(run())\n")  # pip's generated console script, less its __main__ check


def main(argv: list[str]) -> None:
    script = "--script" in argv
    argv = [a for a in argv if a != "--script"]
    out = None
    if "--json" in argv:
        i = argv.index("--json")
        out = argv[i + 1]
        del argv[i:i + 2]
    rounds, args, trees = int(argv[0]), shlex.split(argv[1]), argv[2:]
    pre = ["chrt", "-f", os.environ["AB_CHRT"]] if os.environ.get("AB_CHRT") else []
    cmd = [PY, "-c", SCRIPT] if script else [PY, "-m", "dsbackup"]
    for t in trees:
        subprocess.run([PY, "-m", "compileall", "-q", f"{t}/src/dsbackup"], check=True,
                       env=ENV0)
    res: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
    load0 = os.getloadavg()
    for r in range(rounds):
        for t in trees if r % 2 == 0 else trees[::-1]:
            if args[-1].startswith("lmdb:"):
                shutil.rmtree(args[-1][5:], ignore_errors=True)
            elif "backup" in args and os.path.exists(args[-1]):
                os.unlink(args[-1])
            t0 = time.perf_counter()
            p = subprocess.Popen([*pre, *cmd, *args], env=dict(ENV0, PYTHONPATH=f"{t}/src"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{t}: {args}: exit {os.waitstatus_to_exitcode(status)}")
            res[t].append((wall, ru.ru_utime + ru.ru_stime))
    load1 = os.getloadavg()
    print(f"load average {load0} -> {load1}; {rounds} rounds; "
          f"{'console script' if script else 'python -m dsbackup'} {' '.join(args)}"
          f"{' under chrt -f ' + os.environ['AB_CHRT'] if pre else ''}")
    first = res[trees[0]]
    summary = {}
    for t in trees:
        v = res[t]
        cpu = statistics.median(x[1] / y[1] for x, y in zip(v, first))
        wall = statistics.median(x[0] / y[0] for x, y in zip(v, first))
        lower = sum(x[1] < y[1] for x, y in zip(v, first))
        faster = sum(x[0] < y[0] for x, y in zip(v, first))
        summary[t] = {"cpu_s": statistics.median(x[1] for x in v),
                      "wall_s": statistics.median(x[0] for x in v),
                      "cpu_ratio": cpu, "wall_ratio": wall, "cpu_lower": lower,
                      "wall_faster": faster, "rounds": [{"wall_s": w, "cpu_s": c} for w, c in v]}
        print(f"{t}: CPU ms {1000 * summary[t]['cpu_s']:.1f}, wall ms "
              f"{1000 * summary[t]['wall_s']:.1f}; / first tree per round: CPU {cpu:.3f} "
              f"(lower in {lower}/{rounds}), wall {wall:.3f} (faster in {faster}/{rounds})")
    if out:
        with open(out, "w") as f:
            json.dump({"args": args, "script": script, "chrt": os.environ.get("AB_CHRT"),
                       "rounds": rounds, "load_start": load0, "load_end": load1,
                       "trees": summary}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
