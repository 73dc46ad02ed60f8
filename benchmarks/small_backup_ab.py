"""Small-record backup against the ISA-L x2-process ceiling, two trees interleaved (issue #21).

Usage: python benchmarks/small_backup_ab.py LMDB_DIR ROUNDS TREE[:ENV=V,...] TREE[:ENV=V,...] ...
Each TREE is a checkout (its src/ goes on PYTHONPATH; compiled to .pyc first, as an installed
package is). Every round runs each spec's `python -m dsbackup backup` (order reversed every
other round, `sync` before each) under `perf stat -e task-clock`, which gives the total CPU
seconds of the backup's processes (children included; the machine's load changes it far
less than the wall time), and the wall time of the whole process; then `compare.py --child
isal-procs` (ISA-L level 1 in 2 forked processes: the ceiling), its wall time and the CPU
seconds of its two compressing processes. Both are reported, with ours against the ceiling
on each measure (ceiling / ours: 1.0 would be as fast as the ceiling). ``--cpu`` is accepted
for older command lines (both are always measured). ``AB_NICE=-19`` runs the timed
processes at that niceness. Medians of the rounds; the first spec is the baseline of the
per-round ratios. ``AB_CHRT=10`` runs them
instead under ``chrt -f 10`` (SCHED_FIFO, root only; the kernel's real-time throttling still
leaves others 5 % of each second): on a machine shared with other work, their processes
then do not preempt ours or the ceiling's, so the wall times approach a quiet machine's.
With ``AB_PARENT_FIRST=1`` too, our CLI runs one priority above its planner and workers
(benchmarks/fifo_parent_first.py), so that it preempts them when a message comes, as on CFS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
HERE = Path(__file__).resolve().parent
NICE = ["nice", "-n", os.environ.get("AB_NICE", "0")]
if os.environ.get("AB_CHRT"):  # SCHED_FIFO at that priority (root): other load cannot preempt
    NICE = ["chrt", "-f", os.environ["AB_CHRT"]]
# with AB_CHRT: our CLI one priority above its planner and workers (fifo_parent_first.py)
PARENT_FIRST = bool(os.environ.get("AB_CHRT") and os.environ.get("AB_PARENT_FIRST"))
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _env(spec: str) -> tuple[str, dict[str, str]]:
    tree, _, extra = spec.partition(":")
    env = dict(ENV0, PYTHONPATH=f"{tree}/src")
    for kv in filter(None, extra.split(",")):
        k, v = kv.split("=", 1)
        env[k] = v
    return tree, env


def _backup(spec: str, src: str, out: str) -> tuple[float, float]:
    """(wall s, total CPU s) of one backup."""
    _, env = _env(spec)
    if os.path.exists(out):
        os.unlink(out)
    subprocess.run(["sync"], check=True)
    cmd = [PY, "-m", "dsbackup", "backup", "lmdb:" + src, out]
    pre = NICE
    if PARENT_FIRST:
        cmd[1:3] = [str(HERE / "fifo_parent_first.py")]
        pre = ["chrt", "-f", str(int(os.environ["AB_CHRT"]) + 1)]
    t0 = time.perf_counter()
    p = subprocess.run(pre + ["perf", "stat", "-x,", "-e", "task-clock", *cmd], env=env,
                       capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    line = next(x for x in p.stderr.splitlines() if "task-clock" in x)
    return wall, float(line.split(",")[0]) / 1000


def _ceiling(src: str, work: str) -> tuple[float, float]:
    """(wall s, CPU s) of ISA-L level 1 in 2 processes on the same values."""
    p = subprocess.run(NICE + [PY, str(HERE / "compare.py"), "--child", "isal-procs",
                               "lmdb:" + src, "2", os.path.join(work, "isalp.size")],
                       env=ENV0, capture_output=True, text=True, check=True)
    info = json.loads(p.stdout.strip().splitlines()[-1])
    return info["seconds"], info["cpu"]


def _report(what: str, res: dict[str, list[float]], ceil: list[float]) -> None:
    specs = list(res)
    mc = statistics.median(ceil)
    print(f"-- {what}")
    print(f"isal-1 in 2 processes (ceiling): median {mc:.3f} {[round(x, 3) for x in ceil]}")
    for s in specs:
        m = statistics.median(res[s])
        per = [c / x for c, x in zip(ceil, res[s])]
        print(f"{s}: median {m:.3f}  of ceiling {mc / m:.3f} (per round: median "
              f"{statistics.median(per):.3f})  {[round(x, 3) for x in res[s]]}")
    for s in specs[1:]:
        rs = [b / a for a, b in zip(res[specs[0]], res[s])]
        print(f"{s} / {specs[0]}: per-round ratio median {statistics.median(rs):.3f}, "
              f"lower in {sum(x < 1 for x in rs)}/{len(rs)}")


def main(argv: list[str]) -> None:
    argv = [a for a in argv if a != "--cpu"]
    src, rounds, specs = argv[0], int(argv[1]), argv[2:]
    work = os.environ.get("TMPDIR", "/tmp")
    out = os.path.join(work, f"small-ab-{os.getpid()}.dsb")
    for tree in {_env(s)[0] for s in specs}:
        subprocess.run([PY, "-m", "compileall", "-q", f"{tree}/src/dsbackup"], check=True,
                       env=ENV0)
    for f in os.listdir(src):  # warm: the store in the page cache
        with open(os.path.join(src, f), "rb") as fh:
            while fh.read(1 << 24):
                pass
    wall: dict[str, list[float]] = {s: [] for s in specs}
    cpu: dict[str, list[float]] = {s: [] for s in specs}
    cwall: list[float] = []
    ccpu: list[float] = []
    for r in range(rounds):
        for s in specs if r % 2 == 0 else specs[::-1]:
            w, c = _backup(s, src, out)
            wall[s].append(w)
            cpu[s].append(c)
        w, c = _ceiling(src, work)
        cwall.append(w)
        ccpu.append(c)
    if os.path.exists(out):
        os.unlink(out)
    print(f"load average {os.getloadavg()}; {rounds} rounds")
    _report("total CPU s (perf stat task-clock; the ceiling: its 2 processes)", cpu, ccpu)
    _report("wall s", wall, cwall)


if __name__ == "__main__":
    main(sys.argv[1:])
