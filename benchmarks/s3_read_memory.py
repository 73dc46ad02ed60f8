"""Peak RSS and time of a restore and a deep verify read from S3, beside the same from the local
file, interleaved rounds, medians (issue #17, docs/STORAGE.md "Reading").

Usage: python benchmarks/s3_read_memory.py [--mb 256] [--rounds 5] [--workers 2]
       [--server rclone] [--before SRC] [--json FILE] [--work-dir DIR]

One store (``--mb`` of blocks, unsorted) is backed up once to a local file and once to the
server (``benchmarks/s3.py``'s ``Server``: ``rclone serve s3``, read through its range relay,
or ``moto``); then every round runs ``restore`` (into an empty LMDB) and ``verify`` (deep),
each from the file and from S3, as ``python -m dsbackup`` children: wall time, peak RSS
(``wait4``) and CPU seconds. ``--before SRC`` also runs the S3 rows with the ``src`` directory
SRC (another checkout, its extension built), right beside this checkout's, the order swapped
every round: per-round time ratios after / before, for a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import s3 as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--server", default="rclone", choices=("rclone", "moto"))
    ap.add_argument("--before", type=Path, default=None,
                    help="the src directory of another version: its S3 rows too")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where the store, archives and restore targets go (a tmpfs such as "
                         "/dev/shm takes the page cache's writeback out of the restore rows)")
    args = ap.parse_args(argv)
    srcs = {"after": str(HERE.parent / "src")}
    if args.before is not None:
        srcs["before"] = str(args.before.resolve())
    work = Path(tempfile.mkdtemp(prefix="dsbackup-s3read-", dir=args.work_dir))
    server = bench.Server(args.server, work)
    try:
        env = dict(os.environ, PYTHONPATH=srcs["after"], AWS_ACCESS_KEY_ID=bench.KEY_ID,
                   AWS_SECRET_ACCESS_KEY=bench.SECRET, AWS_REGION="us-east-1",
                   AWS_REQUEST_CHECKSUM_CALCULATION="when_required")
        store = work / "src"
        store_bytes = bench._make_store(store, args.mb, env, sort=False)
        dsb = [sys.executable, "-m", "dsbackup"]
        w = ["--workers", str(args.workers)]
        local, remote = work / "a.dsb", f"s3://{bench.BUCKET}/a.dsb"
        bench._timed(dsb + ["backup", f"lmdb:{store}", str(local), *w], env)
        bench._timed(dsb + ["backup", f"lmdb:{store}", remote, *w],
                     dict(env, AWS_ENDPOINT_URL=server.endpoint))
        target = work / "target"
        rows = [("restore-local", ["restore", str(local), f"lmdb:{target}", *w], False),
                ("restore-s3", ["restore", remote, f"lmdb:{target}", *w], True),
                ("verify-local", ["verify", str(local)], False),
                ("verify-s3", ["verify", remote], True)]
        res: dict[str, list[tuple[float, int, float]]] = {}
        for r in range(args.rounds):
            versions = sorted(srcs, reverse=r % 2 == 0)  # before, after; then after, before
            for name, cmd, s3 in rows:
                for v in versions if s3 else ["after"]:
                    e = dict(env, PYTHONPATH=srcs[v])
                    if s3:
                        e["AWS_ENDPOINT_URL"] = server.read_endpoint
                    res.setdefault(f"{name}:{v}", []).append(bench._timed(dsb + cmd, e))
                    shutil.rmtree(target, ignore_errors=True)
        doc: dict = {"store_bytes": store_bytes, "archive_bytes": local.stat().st_size,
                     "rounds": args.rounds, "workers": args.workers, "server": server.desc,
                     "loadavg_at_end": os.getloadavg(), "rows": {}, "ratios": {}}
        for k, v in res.items():
            doc["rows"][k] = {"median_s": statistics.median(x[0] for x in v),
                              "peak_rss_mib": max(x[1] for x in v) / 2**20,
                              "median_cpu_s": statistics.median(x[2] for x in v),
                              "all_s": [x[0] for x in v]}
            print(f"{k:22} {doc['rows'][k]['median_s']:7.2f} s  peak RSS "
                  f"{doc['rows'][k]['peak_rss_mib']:6.1f} MiB  cpu "
                  f"{doc['rows'][k]['median_cpu_s']:5.2f} s")
        for op in ("restore-s3", "verify-s3"):
            if "before" in srcs:
                after, before = res[f"{op}:after"], res[f"{op}:before"]
                t = [a[0] / b[0] for a, b in zip(after, before)]
                c = [a[2] / b[2] for a, b in zip(after, before)]
                doc["ratios"][op] = {"time_after_of_before_rounds": t,
                                     "time_median": statistics.median(t),
                                     "cpu_median": statistics.median(c)}
                print(f"{op}: time after / before per round "
                      f"{' '.join(f'{x:.2f}' for x in t)} (median {statistics.median(t):.2f}),"
                      f" CPU median {statistics.median(c):.2f}")
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1) + "\n")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
