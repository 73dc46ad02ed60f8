"""Bytes and GETs a restore of one prefix, an incremental's restore and its deep verify, and a
whole restore ask an S3 server for (counted from the Range headers at the tests' fault proxy in
front of moto on 127.0.0.1; the CLI in subprocesses). Not a test: docs/STORAGE.md "Planned
reads" cites its output.

    python benchmarks/s3_read_bytes.py [--src DIR] [--values N]

`--src`: the source tree the CLI runs from (default: this checkout's src), so an older tree
(its src/, with the built extension) gives the "before" numbers on the same bytes. Needs
moto[server] and boto3 (the test extra). Prints one JSON object: per operation and object,
[GETs, bytes].
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

PREFIXES = ("/a", "/b", "/c", "/d")
BUCKET = "readbytes"


def _store(path: Path, values: int, changed: int) -> None:
    """`values` incompressible 8 KiB values under each prefix; the first `changed` of /c
    replaced (the incremental's change)."""
    import lmdb

    rng = random.Random(5)
    env = lmdb.open(str(path), map_size=1 << 34)
    with env.begin(write=True) as txn:
        for p in PREFIXES:
            for i in range(values):
                v = rng.randbytes(8192)
                if p == "/c" and i < changed:
                    v = random.Random(100000 + i).randbytes(8192)
                txn.put(f"{p}/{i:05d}".encode(), v)
    env.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT / "src"))
    ap.add_argument("--values", type=int, default=1000, help="values per prefix (8 KiB each)")
    args = ap.parse_args()
    from s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, MotoServer

    server = MotoServer()
    proxy = FaultProxy(("127.0.0.1", server.port)).start()
    server.client().create_bucket(Bucket=BUCKET)
    env = dict(os.environ, PYTHONPATH=args.src, AWS_ACCESS_KEY_ID=ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL=proxy.endpoint, AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_CONFIG_FILE="/nonexistent")

    def cli(*a: str) -> None:
        r = subprocess.run([sys.executable, "-m", "dsbackup", *a], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"dsbackup {' '.join(a)}: exit {r.returncode}: {r.stderr}")

    def fetched() -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for line, h in zip(proxy.seen, proxy.headers):
            rng = h.get("range", "")
            if not line.startswith(f"GET /{BUCKET}/") or not rng.startswith("bytes="):
                continue
            key = line.split()[1].split("/", 2)[2].split("?")[0]
            lo, _, hi = rng[6:].partition("-")
            got = out.setdefault(key, [0, 0])
            got[0] += 1
            got[1] += int(hi) - int(lo) + 1 if lo else int(hi)
        return out

    def measure(*a: str) -> dict[str, list[int]]:
        with proxy.lock:
            proxy.seen.clear()
            proxy.headers.clear()
            proxy.body_sha256.clear()
        cli(*a)
        return fetched()

    try:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            _store(t / "s1", args.values, 0)
            _store(t / "s2", args.values, args.values // 10)
            full, inc = f"s3://{BUCKET}/full.dsb", f"s3://{BUCKET}/inc.dsb"
            cli("backup", f"lmdb:{t / 's1'}", full, "--level", "0")
            cli("backup", f"lmdb:{t / 's2'}", inc, "--level", "0", "--parent", full)
            listed = server.client().list_objects_v2(Bucket=BUCKET)["Contents"]
            result = {
                "src": args.src, "values_per_prefix": args.values,
                "sizes": {o["Key"]: o["Size"] for o in listed},
                "restore_prefix_b": measure("restore", full, f"lmdb:{t / 'r1'}",
                                            "--prefix", "/b"),
                "restore_incremental": measure("restore", inc, f"lmdb:{t / 'r2'}"),
                "verify_deep_incremental": measure("verify", inc),
                "restore_full": measure("restore", full, f"lmdb:{t / 'r3'}"),
            }
    finally:
        proxy.stop()
        server.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
