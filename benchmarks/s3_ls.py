"""Bytes, GETs, client CPU and time of ``ls`` of an archive with catalogs read from S3, beside
the same ``ls`` of the local file, interleaved rounds, medians (issue #17, docs/STORAGE.md
"Reading", docs/PERFORMANCE.md "ls from S3").

Usage: python benchmarks/s3_ls.py [--mb 256] [--rounds 3] [--gaps 0,256,1024]
       [--before SRC] [--json FILE] [--work-dir DIR]

One store (``--mb`` of blocks, unsorted) is backed up with ``--include-metadata`` to a local
file, and the file put on ``rclone serve s3`` (``benchmarks/s3.py``'s ``Server``), read
through its range relay, which counts the GETs and the body bytes it relays. Every round
runs ``ls -l`` from the file and from S3 with each ``DSBACKUP_S3_GAP_KB`` of ``--gaps`` (and
with the ``src`` directory SRC of ``--before``, another checkout with its extension built,
order swapped every round) as ``python -m dsbackup`` children: wall time, peak RSS, CPU
seconds of the child, GETs and bytes downloaded.
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gaps", default="0,256,1024", help="DSBACKUP_S3_GAP_KB values, KiB")
    ap.add_argument("--before", type=Path, default=None,
                    help="the src directory of another version: its S3 row too")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    after = str(HERE.parent / "src")
    work = Path(tempfile.mkdtemp(prefix="dsbackup-s3ls-", dir=args.work_dir))
    server = bench.Server("rclone", work)
    try:
        env = dict(os.environ, PYTHONPATH=after, AWS_ACCESS_KEY_ID=bench.KEY_ID,
                   AWS_SECRET_ACCESS_KEY=bench.SECRET, AWS_REGION="us-east-1",
                   AWS_REQUEST_CHECKSUM_CALCULATION="when_required")
        env.pop("DSBACKUP_S3_GAP_KB", None)
        store = work / "src"
        store_bytes = bench._make_store(store, args.mb, env, sort=False)
        dsb = [sys.executable, "-m", "dsbackup"]
        local, remote = work / "a.dsb", f"s3://{bench.BUCKET}/a.dsb"
        bench._timed(dsb + ["backup", f"lmdb:{store}", str(local), "--include-metadata"], env)
        server.client.upload_file(str(local), bench.BUCKET, "a.dsb")
        s3env = dict(env, AWS_ENDPOINT_URL=server.read_endpoint)
        rows: list[tuple[str, list[str], dict[str, str]]] = [
            ("ls-local", ["ls", "-l", str(local)], env)]
        for gap in args.gaps.split(","):
            rows.append((f"ls-s3-gap{gap}", ["ls", "-l", remote],
                         dict(s3env, DSBACKUP_S3_GAP_KB=gap)))
        if args.before is not None:
            rows.append(("ls-s3-before", ["ls", "-l", remote],
                         dict(s3env, PYTHONPATH=str(args.before.resolve()))))
        relay = server.relay
        res: dict[str, list[tuple[float, int, float, int, int]]] = {}
        for r in range(args.rounds):
            for name, cmd, e in (rows if r % 2 == 0 else rows[::-1]):
                g0, b0 = relay.gets, relay.get_bytes
                took, rss, cpu = bench._timed(dsb + cmd, e)
                res.setdefault(name, []).append((took, rss, cpu, relay.gets - g0,
                                                 relay.get_bytes - b0))
        doc: dict = {"store_bytes": store_bytes, "archive_bytes": local.stat().st_size,
                     "rounds": args.rounds, "server": server.desc,
                     "loadavg_at_end": os.getloadavg(), "rows": {}}
        for k, v in res.items():
            row = {"median_s": statistics.median(x[0] for x in v),
                   "peak_rss_mib": max(x[1] for x in v) / 2**20,
                   "median_cpu_s": statistics.median(x[2] for x in v),
                   "cpu_s": [x[2] for x in v],
                   "gets": max(x[3] for x in v), "bytes": max(x[4] for x in v)}
            doc["rows"][k] = row
            print(f"{k:16} {row['median_s']:6.2f} s  RSS {row['peak_rss_mib']:5.1f} MiB  "
                  f"cpu {row['median_cpu_s']:5.2f} s ({' '.join(f'{c:.2f}' for c in row['cpu_s'])})"
                  f"  GETs {row['gets']:5d}  bytes {row['bytes'] / 1e6:8.2f} MB")
        print(f"archive {doc['archive_bytes'] / 1e6:.1f} MB")
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1) + "\n")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
