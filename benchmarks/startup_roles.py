"""Where a small backup's CPU goes, per process, and how soon its workers start (issue #21).

Usage: python benchmarks/startup_roles.py LMDB_DIR ROUNDS TREE[:ENV=V,...] TREE[:ENV=V,...] ...
Every round runs each spec's `python -m dsbackup backup` under `perf record -F 1999` (order
reversed every other round) and splits the samples by process: the CLI's main thread, its
other threads, the helpers (fork server and resource tracker, or the zygote: the processes
other than the last three), the scan (the last three: 2 workers and the planner — so run it
where the default is 2 workers, 2 CPUs), and the time from exec to the first sample of a scan
process. Medians; per-round ratios against the first spec. Needs `perf` (perf_event_paranoid <= 2 for one's own processes).
"""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
import sys

F = 1999
PY = sys.executable
KEYS = ["cli_main", "cli_threads", "helpers", "scan", "total", "first_worker_s", "span_s"]


def one(store: str, spec: str, work: str) -> dict[str, float]:
    tree, _, extra = spec.partition(":")
    env = dict(os.environ, PYTHONPATH=f"{tree}/src")
    for kv in filter(None, extra.split(",")):
        k, v = kv.split("=", 1)
        env[k] = v
    out, data = os.path.join(work, "roles.dsb"), os.path.join(work, "roles.perf")
    if os.path.exists(out):
        os.unlink(out)
    subprocess.run(["perf", "record", "-q", "-F", str(F), "-o", data, "--", PY, "-m",
                    "dsbackup", "backup", "lmdb:" + store, out], env=env, check=True,
                   capture_output=True)
    txt = subprocess.run(["perf", "script", "-i", data, "-F", "pid,tid,time"],
                         capture_output=True, text=True, check=True).stdout
    rows: dict[tuple[int, int], list[float]] = collections.defaultdict(list)
    for line in txt.splitlines():
        a = line.replace(":", " ").split()
        if a:
            pid, tid = map(int, a[0].split("/"))
            rows[(pid, tid)].append(float(a[-1]))
    t0 = min(min(v) for v in rows.values())
    cli = min(pid for pid, _ in rows)
    others = sorted({pid for pid, _ in rows if pid != cli})
    scan, helpers = others[-3:], others[:-3]

    def cpu(pred) -> float:
        return sum(len(v) for (p, t), v in rows.items() if pred(p, t)) / F

    r = {"cli_main": cpu(lambda p, t: p == cli and t == cli),
         "cli_threads": cpu(lambda p, t: p == cli and t != cli),
         "helpers": cpu(lambda p, t: p in helpers), "scan": cpu(lambda p, t: p in scan),
         "first_worker_s": min(min(v) for (p, _), v in rows.items() if p in scan) - t0,
         "span_s": max(max(v) for v in rows.values()) - t0}
    r["total"] = r["cli_main"] + r["cli_threads"] + r["helpers"] + r["scan"]
    return r


def main(argv: list[str]) -> None:
    store, rounds, specs = argv[0], int(argv[1]), argv[2:]
    work = os.environ.get("TMPDIR", "/tmp")
    for f in os.listdir(store):  # warm: the store in the page cache
        with open(os.path.join(store, f), "rb") as fh:
            while fh.read(1 << 24):
                pass
    res: dict[str, list[dict[str, float]]] = {s: [] for s in specs}
    for i in range(rounds):
        for s in specs if i % 2 == 0 else specs[::-1]:
            res[s].append(one(store, s, work))
    print(f"load average {os.getloadavg()}; {rounds} rounds; medians, CPU s from perf samples")
    print(f"{'':40}" + "".join(f"{k:>15}" for k in KEYS))
    for s in specs:
        print(f"{s[-40:]:40}" + "".join(f"{statistics.median(r[k] for r in res[s]):15.3f}"
                                        for k in KEYS))
    for s in specs[1:]:
        for k in ("total", "first_worker_s", "span_s", "cli_main"):
            rs = [b[k] / a[k] for a, b in zip(res[specs[0]], res[s])]
            print(f"{s} / {specs[0]}: {k} per-round ratio median {statistics.median(rs):.3f}, "
                  f"lower in {sum(x < 1 for x in rs)}/{len(rs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
