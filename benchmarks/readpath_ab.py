"""Deep verify and restore (the reading path) of trees interleaved, against `zstd -t` and the
durable `tar | zstd` restore in the same rounds (issue #21 items 1-2).

Usage: python benchmarks/readpath_ab.py [--rounds N] [--ops verify,restore]
           --tzst STORE.tar.zst --archives A.tar.gz[,Z.tar.gz]
           [--target lmdb|flatfs] [--work DIR] TREE [TREE ...]

Every round runs, in an order reversed every other round (wall seconds, and CPU seconds of
every process and thread of the row, from os.wait4):

- verify: `python -m dsbackup verify ARCHIVE` (deep) of each archive under each TREE (its
  src/ on PYTHONPATH, byte-compiled first), and `zstd -q -t STORE.tar.zst`;
- restore: `python -m dsbackup restore ARCHIVE lmdb:NEW` (or `flatfs:NEW`: --target) of each
  archive under each TREE, and `zstd -q -d -c STORE.tar.zst | tar -xf - -C NEW` followed by an
  fsync of every file and directory it wrote (benchmarks/compare.py's durable row). Each
  restore writes a new directory, removed (untimed) after the row, with an untimed `sync`
  before every row.

Prints medians and, per row, the baseline's time over ours (>= 1: as fast or faster) by the
medians and the median of per-round ratios. Archives and STORE.tar.zst are read once first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

PY = sys.executable
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system) of the process and every descendant it
    waited for (os.wait4: no profiler in the row's wall time)."""
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.stderr is not None
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{cmd}: exit {p.returncode}: {err[-2000:]!r}")
    return wall, ru.ru_utime + ru.ru_stime


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ops", default="verify,restore")
    ap.add_argument("--tzst", required=True)
    ap.add_argument("--archives", required=True)
    ap.add_argument("--target", choices=("lmdb", "flatfs"), default="lmdb")
    ap.add_argument("--work", default="/tmp/readpath-ab")
    ap.add_argument("--json", default=None)
    ap.add_argument("trees", nargs="+")
    a = ap.parse_args(argv)
    ops = set(a.ops.split(","))
    archives = a.archives.split(",")
    os.makedirs(a.work, exist_ok=True)
    for tree in a.trees:
        subprocess.run([PY, "-m", "compileall", "-q", f"{tree}/src/dsbackup"], check=True,
                       env=ENV0)
    for f in [a.tzst, *archives]:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    # name -> (command, env, output directory or None, baseline name)
    rows: dict[str, tuple[list[str], dict[str, str], str | None, str]] = {}
    if "verify" in ops:
        rows["zstd -t"] = (["zstd", "-q", "-t", a.tzst], ENV0, None, "zstd -t")
    if "restore" in ops:
        out = os.path.join(a.work, "tar")
        rows["tar|zstd restore+sync"] = (
            ["bash", "-o", "pipefail", "-c",
             f"mkdir '{out}' && zstd -q -d -c '{a.tzst}' | tar -xf - -C '{out}' && "
             f"find '{out}' -exec sync -- {{}} + && sync -- '{a.work}'"],
            ENV0, out, "tar|zstd restore+sync")
    for ti, tree in enumerate(a.trees):
        env = dict(ENV0, PYTHONPATH=f"{tree}/src")
        for arc in archives:
            label = f"T{ti} {os.path.basename(arc)}"
            if "verify" in ops:
                rows[f"verify {label}"] = ([PY, "-m", "dsbackup", "verify", arc], env, None,
                                           "zstd -t")
            if "restore" in ops:
                out = os.path.join(a.work, f"r{ti}-{os.path.basename(arc)}")
                rows[f"restore {label}"] = (
                    [PY, "-m", "dsbackup", "restore", arc, f"{a.target}:{out}"], env, out,
                    "tar|zstd restore+sync")
    names = list(rows)
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(a.rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            cmd, env, out, _ = rows[k]
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            res[k].append(_timed(cmd, env))
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
    for i, t in enumerate(a.trees):
        print(f"T{i} = {t}")
    print(f"load average {os.getloadavg()}; {a.rounds} rounds")
    summary: dict[str, dict[str, float]] = {}
    for i, what in ((1, "CPU s"), (0, "wall s")):
        print(f"-- {what}")
        for k in names:
            base = [x[i] for x in res[rows[k][3]]]
            v = [x[i] for x in res[k]]
            m, mb = statistics.median(v), statistics.median(base)
            per = statistics.median(b / x for b, x in zip(base, v))
            summary.setdefault(k, {})[what] = m
            print(f"{k:40s} median {m:.3f}  base/ours {mb / m:.3f} (per round {per:.3f})  "
                  f"{[round(x, 3) for x in v]}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"trees": a.trees, "rounds": a.rounds, "load": os.getloadavg(),
                       "medians": summary, "all": res}, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
