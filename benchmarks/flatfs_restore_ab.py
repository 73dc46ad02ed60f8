"""Restore into flatfs: dsbackup trees interleaved against the durable `tar | zstd` restore of
the same flatfs store, in the same rounds (issue #21 item 1).

Usage: python benchmarks/flatfs_restore_ab.py --archive A.tar.gz --tzst STORE.tar.zst
           [--source STORE] [--scheme flatfs|kubo] [--rounds N] [--work DIR] [--chrt]
           [--json FILE] TREE [TREE ...]

A.tar.gz: our archive of a flatfs store (`dsbackup backup flatfs:STORE A.tar.gz`);
STORE.tar.zst: `tar -cf - -C STORE . | zstd -T2` of the same store. Every round runs, in an
order reversed every other round (wall seconds, CPU seconds of every process and thread of
the row from os.wait4, and the load average when the row starts):

- `python -m dsbackup restore A.tar.gz flatfs:NEW` under each TREE (its src/ on PYTHONPATH,
  byte-compiled first); with `--scheme kubo`, `kubo:NEW` (A.tar.gz then a Kubo repo's
  archive, STORE its `blocks` directory);
- `zstd -d -c STORE.tar.zst | tar -xf - -C NEW` and then an fsync of every file and directory
  it wrote (`find NEW -exec sync -- {} + && sync -- WORK`: benchmarks/compare.py's durable
  row).

Each row writes a new directory; the last row's output is removed and `sync` run (untimed)
before every row. With --source, each tree's first output (kubo: its blocks/) is compared
with STORE (every path, mode and size, and the bytes of every .data file): a restore that is
fast but not exact fails the run. --chrt runs every row under `chrt -f 10` (SCHED_FIFO:
other processes of a loaded machine do not preempt it; I/O is still shared). Prints medians
and, per row, the tar row's time over the row's (>= 1: as fast or faster) by the medians and
the median of per-round ratios, and each tree's time over the first tree's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

PY = sys.executable
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TAR = "tar|zstd restore+sync"


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system of the process and every descendant it waited
    for) and the 1-minute load average when it started."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.stderr is not None
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{cmd}: exit {code}: {err[-2000:]!r}")
    return wall, ru.ru_utime + ru.ru_stime, load


def _layout(root: str) -> dict[str, tuple[int, int, str]]:
    """path -> (mode, size, sha256 of a .data file's bytes), diskUsage.cache and the root's
    own size left out (a directory's size depends on the order its entries were made)."""
    out: dict[str, tuple[int, int, str]] = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if rel == "diskUsage.cache":
                continue
            st = os.lstat(p)
            digest = ""
            if n.endswith(".data"):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[rel] = (st.st_mode, 0 if n in dirs else st.st_size, digest)
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", required=True)
    ap.add_argument("--tzst", required=True)
    ap.add_argument("--source", default=None)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--work", default="/tmp/flatfs-restore-ab")
    ap.add_argument("--scheme", choices=("flatfs", "kubo"), default="flatfs")
    ap.add_argument("--chrt", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("trees", nargs="+")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    pre = ["chrt", "-f", "10"] if a.chrt else []
    for tree in a.trees:
        subprocess.run([PY, "-m", "compileall", "-q", f"{tree}/src/dsbackup"], check=True,
                       env=ENV0)
    for f in (a.tzst, a.archive):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    want = _layout(a.source) if a.source else None
    # name -> (command, env, output directory)
    rows: dict[str, tuple[list[str], dict[str, str], str]] = {}
    out = os.path.join(a.work, "tar")
    rows[TAR] = (pre + ["bash", "-o", "pipefail", "-c",
                        f"mkdir '{out}' && zstd -q -d -c '{a.tzst}' | tar -xf - -C '{out}' && "
                        f"find '{out}' -exec sync -- {{}} + && sync -- '{a.work}'"], ENV0, out)
    for ti, tree in enumerate(a.trees):
        out = os.path.join(a.work, f"r{ti}")
        rows[f"T{ti}"] = (pre + [PY, "-m", "dsbackup", "restore", a.archive,
                                 f"{a.scheme}:{out}"],
                          dict(ENV0, PYTHONPATH=f"{tree}/src"), out)
    names = list(rows)
    res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in names}
    last: str | None = None
    for r in range(a.rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            cmd, env, out = rows[k]
            if last is not None:
                shutil.rmtree(last, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            res[k].append(_timed(cmd, env))
            last = out
            if r == 0 and want is not None and k != TAR:
                got = _layout(out if a.scheme == "flatfs" else os.path.join(out, "blocks"))
                if got != want:
                    diff = sorted(set(got.items()) ^ set(want.items()))[:5]
                    raise SystemExit(f"{k}: restored tree differs from {a.source}: {diff}")
    if last is not None:
        shutil.rmtree(last, ignore_errors=True)
    for i, t in enumerate(a.trees):
        print(f"T{i} = {t}")
    loads = [x[2] for v in res.values() for x in v]
    print(f"{a.rounds} rounds; load average at the rows' start: median "
          f"{statistics.median(loads):.2f}, {min(loads):.2f}-{max(loads):.2f}"
          f"{'; rows under chrt -f 10' if a.chrt else ''}")
    summary: dict[str, dict[str, float]] = {}
    for i, what in ((0, "wall s"), (1, "CPU s")):
        print(f"-- {what}")
        for k in names:
            v = [x[i] for x in res[k]]
            tar = [x[i] for x in res[TAR]]
            t0 = [x[i] for x in res["T0"]]
            m = statistics.median(v)
            per = statistics.median(b / x for b, x in zip(tar, v))
            vs0 = statistics.median(x / b for b, x in zip(t0, v))
            summary.setdefault(k, {})[what] = m
            summary[k][f"tar/this per round ({what})"] = per
            print(f"{k:24s} median {m:.3f}  tar/this {statistics.median(tar) / m:.3f} "
                  f"(per round {per:.3f})  this/T0 per round {vs0:.3f}  "
                  f"{[round(x, 3) for x in v]}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"trees": a.trees, "rounds": a.rounds, "chrt": a.chrt, "scheme": a.scheme,
                       "archive": a.archive, "tzst": a.tzst, "medians": summary,
                       "all": res}, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
