"""Backup and restore through S3 against local files, and against the obvious alternative,
measured in one run (issue #17, docs/STORAGE.md "Performance").

Usage: python benchmarks/s3.py [--mb 64] [--rounds 3] [--workers 2] [--json FILE]
       [--work-dir DIR]

The server is moto's (``python -m moto.server``) in its own process on 127.0.0.1: an S3
protocol server written in Python, much slower than a real one (it parses every request in
one interpreter and keeps objects in memory), so the S3 rows measure our client against a slow
server; the ratios are lower bounds of what a real endpoint gives.

Rows, each a ``dsbackup`` subprocess (wall time, start-up included on both sides), run
round-robin A, B, C, ... in every round, medians over the rounds:

- ``backup-local``: ``dsbackup backup lmdb:SRC FILE`` (fsynced, renamed, as always);
- ``backup-s3``: ``dsbackup backup lmdb:SRC s3://bench/KEY`` (multipart, parts in flight while
  chunks are compressed, quick check from the bytes sent);
- ``local+upload_file``: the alternative: ``backup-local`` then boto3 ``upload_file`` of the
  archive (multipart, its default 10 threads), in a second subprocess;
- ``restore-local`` / ``restore-s3``: into an empty LMDB;
- ``upload_file`` (the upload step alone) and ``download_file`` (boto3's download of the
  archive): how fast this server takes in and serves bytes, the bound for the S3 rows.

Ratios: ``backup_s3_of_local`` = local time / S3 time (target >= 0.8), ``restore_s3_of_local``
(>= 0.8), ``ours_vs_upload_file`` = alternative time / ``backup-s3`` time (>= 1.5);
``backup_s3_of_bound`` = max(local backup, upload alone) / ``backup-s3`` (1.0: the upload fully
overlaps the backup), ``restore_s3_of_bound`` likewise with the download. Peak RSS of each
process (``wait4``) is kept beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUCKET = "dsbackup-bench"
KEY_ID, SECRET = "AKIABENCHMARK0000000", "bench-secret-key"

UPLOAD = """
import sys, boto3
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id=sys.argv[4], aws_secret_access_key=sys.argv[5])
c.upload_file(sys.argv[2], sys.argv[6], sys.argv[3])
"""
DOWNLOAD = UPLOAD.replace("c.upload_file(sys.argv[2], sys.argv[6], sys.argv[3])",
                          "c.download_file(sys.argv[6], sys.argv[3], sys.argv[2])")
MAKE_STORE = """
import sys
from dsbackup import datasets
datasets.write_lmdb(sys.argv[1], datasets.iter_blocks(int(sys.argv[2])))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                          str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("moto server did not start")


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes of the process) for one subprocess; exits on failure."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    took = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err[-2000:]}")
    return took, ru.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=64.0, help="store size in MiB (blocks)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    from dsbackup import datasets

    work = Path(tempfile.mkdtemp(prefix="dsbackup-s3bench-", dir=args.work_dir))
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = _start_moto(port)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), AWS_ACCESS_KEY_ID=KEY_ID,
               AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=KEY_ID,
                     aws_secret_access_key=SECRET).create_bucket(Bucket=BUCKET)
        src = work / "src"
        n_blocks = max(4, int(args.mb * (1 << 20) / datasets.BLOCK_SIZE))
        # in a child: a fork of a large benchmark process would inherit its peak RSS
        subprocess.run([sys.executable, "-c", MAKE_STORE, str(src), str(n_blocks)], env=env,
                       check=True)
        store_bytes = sum(p.stat().st_size for p in src.iterdir())
        dsb = [sys.executable, "-m", "dsbackup"]
        w = ["--workers", str(args.workers)]
        times: dict[str, list[float]] = {}
        rss: dict[str, list[int]] = {}
        archive_bytes = 0
        for r in range(args.rounds):
            local = work / f"local-{r}.dsb"
            alt = work / f"alt-{r}.dsb"
            rows = [
                ("backup-local", [dsb + ["backup", f"lmdb:{src}", str(local), *w]]),
                ("backup-s3", [dsb + ["backup", f"lmdb:{src}", f"s3://{BUCKET}/b-{r}.dsb", *w]]),
                ("local+upload_file", [
                    dsb + ["backup", f"lmdb:{src}", str(alt), *w],
                    [sys.executable, "-c", UPLOAD, endpoint, str(alt), f"alt-{r}.dsb", KEY_ID,
                     SECRET, BUCKET]]),
                ("download_file", [[sys.executable, "-c", DOWNLOAD, endpoint,
                                    str(work / "dl.dsb"), f"alt-{r}.dsb", KEY_ID, SECRET,
                                    BUCKET]]),
                ("restore-local", [dsb + ["restore", str(local), f"lmdb:{work}/rl-{r}", *w]]),
                ("restore-s3", [dsb + ["restore", f"s3://{BUCKET}/b-{r}.dsb",
                                       f"lmdb:{work}/rs-{r}", *w]]),
            ]
            for name, cmds in rows:
                total, peak = 0.0, 0
                for i, cmd in enumerate(cmds):
                    t, m = _timed(cmd, env)
                    total += t
                    peak = max(peak, m)
                    if i:  # the upload alone: what the server takes in
                        times.setdefault("upload_file", []).append(t)
                times.setdefault(name, []).append(total)
                rss.setdefault(name, []).append(peak)
            (work / "dl.dsb").unlink()
            archive_bytes = local.stat().st_size
            for p in (local, alt):
                p.unlink()
            shutil.rmtree(work / f"rl-{r}")
            shutil.rmtree(work / f"rs-{r}")
        med = {k: statistics.median(v) for k, v in times.items()}
        doc = {
            "schema": 1, "server": "moto (python -m moto.server, its own process)",
            "rounds": args.rounds, "workers": args.workers, "store_bytes": store_bytes,
            "archive_bytes": archive_bytes, "median_s": med, "all_s": times,
            "peak_rss_bytes": {k: max(v) for k, v in rss.items()},
            "ratios": {
                "backup_s3_of_local": med["backup-local"] / med["backup-s3"],
                "restore_s3_of_local": med["restore-local"] / med["restore-s3"],
                "ours_vs_upload_file": med["local+upload_file"] / med["backup-s3"],
                "rss_s3_of_local": (max(rss["backup-s3"]) / max(rss["backup-local"])),
                # against the server's own speed: 1.0 = as fast as its slower side allows
                "backup_s3_of_bound": max(med["backup-local"], med["upload_file"])
                / med["backup-s3"],
                "restore_s3_of_bound": max(med["restore-local"], med["download_file"])
                / med["restore-s3"],
            },
            "targets": {"backup_s3_of_local": 0.8, "restore_s3_of_local": 0.8,
                        "ours_vs_upload_file": 1.5, "rss_s3_of_local": 1.5,
                        "backup_s3_of_bound": 1.0, "restore_s3_of_bound": 1.0},
        }
        for name, t in med.items():
            peak = f"peak RSS {max(rss[name]) / 2**20:7.1f} MiB" if name in rss else ""
            print(f"{name:<20} {t:8.3f} s  {store_bytes / t / 1e6:8.1f} MB/s  {peak}")
        for k, v in doc["ratios"].items():
            print(f"{k:<22} {v:6.2f}  (target {doc['targets'][k]})")
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1) + "\n")
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
