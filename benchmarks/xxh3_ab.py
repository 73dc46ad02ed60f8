"""A/B of XXH3 throughput in two builds of the native modules, in one interleaved run.

Usage: python benchmarks/xxh3_ab.py A_DIR B_DIR [--rounds N] [--mib M] [--json FILE]

A_DIR and B_DIR each hold a set of built ``dsbackup/_ext/*.so`` files (as for native_ab.py:
e.g. a copy of src/dsbackup/_ext before a change, and after it). Each round runs one
subprocess per build, in the order A, B then B, A (alternating), with this checkout's Python
package and that build's extension modules; each subprocess times every case (per-thread CPU
seconds, best of 3) on the same bytes, after importing what a dsbackup process imports (the archive reader, numpy;
``--bare``: the checksum module alone). Printed per case: the median MB/s of each build (keys:
millions of calls per second) and ``B/A`` (above 1: B is faster).

Cases: one-shot ``xxh3_64`` and ``xxh3_128`` of an M MiB buffer (default 16) and of 4 KiB
pieces, the streaming ``Xxh3_64`` / ``Xxh3_128`` fed 256 KiB at a time, ``xxh3_64_file`` of
an M MiB file in the page cache (the quick verify's read), and ``xxh3_64`` of 36-byte keys
(the chunk-boundary test every key gets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from native_ab import tree_with  # noqa: E402

WORKLOAD = r'''
import json, os, random, time
if os.environ["AB_IMPORTS"] == "1":
    import dsbackup.archive.reader  # noqa: F401  (numpy and the rest, as in a real process)
from dsbackup._ext import checksum

M = int(os.environ["AB_MIB"]) << 20
data = random.Random(7).randbytes(M)
mv = memoryview(data)
PIECE = 256 * 1024
keys = [data[i:i + 36] for i in range(0, 36 * 200_000, 36)]
path = os.environ["AB_FILE"]
fd = os.open(path, os.O_RDONLY)

def best(fn, reps=3):
    t = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        t = min(t, time.thread_time() - t0)
    return t

def stream(cls, digest):
    def fn():
        h = cls()
        for i in range(0, M, PIECE):
            h.update(mv[i:i + PIECE])
        digest(h)
    return fn

def pieces(f):
    def fn():
        for i in range(0, M, 4096):
            f(mv[i:i + 4096])
    return fn

def key_hashes():
    f = checksum.xxh3_64
    for k in keys:
        f(k)

cases = {
    "xxh3_64 one-shot": (M, lambda: checksum.xxh3_64(data)),
    "xxh3_128 one-shot": (M, lambda: checksum.xxh3_128(data)),
    "xxh3_64 4 KiB pieces": (M, pieces(checksum.xxh3_64)),
    "xxh3_128 4 KiB pieces": (M, pieces(checksum.xxh3_128)),
    "Xxh3_64 streaming": (M, stream(checksum.Xxh3_64, checksum.Xxh3_64.intdigest)),
    "Xxh3_128 streaming": (M, stream(checksum.Xxh3_128, checksum.Xxh3_128.digest)),
    "xxh3_64_file": (M, lambda: checksum.xxh3_64_file(fd, 0, M)),
    "xxh3_64 36 B keys (Mcalls/s)": (len(keys), key_hashes),
}
print(json.dumps({name: n / best(fn) / 1e6 for name, (n, fn) in cases.items()}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--bare", action="store_true",
                    help="import only the checksum module (not the archive reader and numpy)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dsbackup-xxh3-ab-"))
    try:
        trees = {name: tree_with(build, work / name)
                 for name, build in (("A", args.a), ("B", args.b))}
        f = work / "data"
        f.write_bytes(os.urandom(args.mib << 20))
        env = {**os.environ, "AB_MIB": str(args.mib), "AB_FILE": str(f),
               "AB_IMPORTS": "0" if args.bare else "1"}
        rates: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
        for r in range(args.rounds):
            for name in (("A", "B") if r % 2 == 0 else ("B", "A")):
                out = subprocess.run([sys.executable, "-c", WORKLOAD], check=True,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**env, "PYTHONPATH": str(trees[name])}).stdout
                for case, v in json.loads(out).items():
                    rates[name].setdefault(case, []).append(v)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        result = {}
        print(f"{'case (MB/s)':30} {'A median':>10} {'B median':>10} {'B/A':>7}")
        for case in rates["A"]:
            a = statistics.median(rates["A"][case])
            b = statistics.median(rates["B"][case])
            result[case] = {"a": a, "b": b, "ratio": b / a,
                            "a_all": rates["A"][case], "b_all": rates["B"][case]}
            print(f"{case:30} {a:10.1f} {b:10.1f} {b / a:7.2f}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
