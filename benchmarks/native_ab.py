"""A/B of two builds of the native modules on the same bytes, in one interleaved run.

Usage: python benchmarks/native_ab.py A_DIR B_DIR [--suite native|xxh3|all] [--rounds N]
       [--mib M] [--bare] [--json FILE]

A_DIR and B_DIR each hold a set of built ``dsbackup/_ext/*.so`` files (e.g. a copy of
src/dsbackup/_ext before a change, and after it). Each round runs one subprocess per build and
suite, in the order A, B then B, A (alternating), with this checkout's Python package and that
build's extension modules; each subprocess times every case of its suite (per-thread CPU
seconds, best of ``DSBACKUP_BENCH_REPS``, default 3) on data made from fixed seeds. Printed per
case: the median time of each build, for a throughput case also the median MB/s (keys:
millions of calls per second) of each, and ``A/B`` = median time A / median time B (above 1:
B is faster). ``--json FILE`` keeps every time.

Suites:

- ``native`` (the default): framing small records (with and without an exclude matcher),
  framing + compressing blocks, payload scan / decode / encode, the key planner, LMDB scan and
  LMDB planning walk, KeyMatcher.match from Python. Scale the data with DSBACKUP_BENCH_SCALE
  (default 0.2).
- ``xxh3``: one-shot ``xxh3_64`` and ``xxh3_128`` of an M MiB buffer (``--mib``, default 16)
  and of 4 KiB pieces, the streaming ``Xxh3_64`` / ``Xxh3_128`` fed 256 KiB at a time,
  ``xxh3_64_file`` of an M MiB file in the page cache (the quick verify's read), and
  ``xxh3_64`` of 36-byte keys (the chunk-boundary test every key gets). Each subprocess first
  imports what a dsbackup process imports (the archive reader, numpy); ``--bare``: the
  checksum module alone.
- ``all``: both.
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
SRC = HERE.parent / "src"

# each suite's script starts with this: the best thread CPU time of DSBACKUP_BENCH_REPS runs
PRELUDE = r'''
import json, os, sys, time

REPS = int(os.environ.get("DSBACKUP_BENCH_REPS", "3"))

def best(fn):
    t = float("inf")
    for _ in range(REPS):
        t0 = time.thread_time()
        fn()
        t = min(t, time.thread_time() - t0)
    return t
'''

NATIVE = PRELUDE + r'''
sys.path.insert(0, os.environ["AB_BENCH_DIR"])
import native_data as nd
from dsbackup._ext import framing, lmdbscan

n = nd.scaled(500_000, 1000)
keys, values = nd.small_records(n)
sizes = [len(v) for v in values]
blocks = nd.mixed_blocks(nd.scaled(64, 4))
bkeys = nd.block_keys(len(blocks))
ex = framing.KeyMatcher(["/data/0*", "/data/**/x", "/pins/*"])

def frame(exclude=None):
    def fn():
        ch = framing.Chunker(1000, 4 << 20, exclude=exclude)
        for i in range(0, n, 10_000):
            ch.add(keys[i:i + 10_000], values[i:i + 10_000])
        ch.finish()
    return fn

def frame_blocks():
    ch = framing.Chunker(10**9, 4 << 20)
    ch.add_compress(bkeys, blocks, 1)
    ch.finish_compress(1)

ch = framing.Chunker(1000, 4 << 20)
payloads = [c.payload for c in ch.add(keys, values)] + [ch.finish().payload]
groups = [(keys[i:i + 1000], values[i:i + 1000]) for i in range(0, n, 1000)]

def plan(exclude=None):
    def fn():
        p = framing.KeyPlanner(1000, 4 << 20, exclude)
        for i in range(0, n, 10_000):
            p.add(keys[i:i + 10_000], sizes[i:i + 10_000])
        p.finish()
    return fn

env = nd.make_lmdb(__import__("pathlib").Path(os.environ["AB_LMDB"]), nd.scaled(500_000, 1000))
kw = {"chunk_size": 1000, "chunk_max_bytes": 4 << 20}

def lmdb_scan(level):
    def fn():
        with lmdbscan.LmdbRangeScanner(str(env), level=level, **kw) as s:
            while s.next_chunk() is not None:
                pass
    return fn

def lmdb_plan():
    with lmdbscan.LmdbRangeScanner(str(env), level=-1, **kw) as s:
        while s.plan_chunks(4096):
            pass

def match_py():
    m = ex.match
    for k in keys[:100_000]:
        m(k)

cases = {
    "frame_small": frame(),
    "frame_small_exclude": frame(ex),
    "frame_compress_blocks_l1": frame_blocks,
    "scan_payload": lambda: [framing.scan_payload(p) for p in payloads],
    "decode_records": lambda: [framing.decode_records(p) for p in payloads],
    "encode_records": lambda: [framing.encode_records(k, v) for k, v in groups],
    "key_planner": plan(),
    "key_planner_exclude": plan(ex),
    "lmdb_scan_frame": lmdb_scan(-1),
    "lmdb_scan_level1": lmdb_scan(1),
    "lmdb_plan_walk": lmdb_plan,
    "keymatcher_match_py": match_py,
}
print(json.dumps({name: [best(fn), None] for name, fn in cases.items()}))
'''


XXH3 = PRELUDE + r'''
import random
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
print(json.dumps({name: [best(fn), n / 1e6] for name, (n, fn) in cases.items()}))
'''


SUITES = {"native": NATIVE, "xxh3": XXH3}


def tree_with(build: Path, root: Path) -> Path:
    """A copy of this checkout's package with ``build``'s extension modules."""
    pkg = root / "dsbackup"
    shutil.copytree(SRC / "dsbackup", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for so in build.glob("*.so"):
        shutil.copy2(so, pkg / "_ext" / so.name)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--suite", choices=[*SUITES, "all"], default="native")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, default=16, help="the xxh3 suite's buffer and file size")
    ap.add_argument("--bare", action="store_true",
                    help="xxh3 suite: import only the checksum module (not the archive reader "
                         "and numpy)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    work = Path(tempfile.mkdtemp(prefix="dsbackup-native-ab-"))
    try:
        trees = {name: tree_with(build, work / name)
                 for name, build in (("A", args.a), ("B", args.b))}
        env = {**os.environ, "AB_BENCH_DIR": str(HERE), "AB_LMDB": str(work / "lmdb"),
               "DSBACKUP_BENCH_SCALE": os.environ.get("DSBACKUP_BENCH_SCALE", "0.2")}
        if "xxh3" in suites:
            f = work / "data"
            f.write_bytes(os.urandom(args.mib << 20))
            env.update(AB_MIB=str(args.mib), AB_FILE=str(f), AB_IMPORTS="0" if args.bare else "1")
        times: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
        work_of: dict[str, float | None] = {}  # MB (or millions of calls) per run of a case
        for r in range(args.rounds):
            for name in (("A", "B") if r % 2 == 0 else ("B", "A")):
                for suite in suites:
                    out = subprocess.run([sys.executable, "-c", SUITES[suite]], check=True,
                                         stdout=subprocess.PIPE, text=True,
                                         env={**env, "PYTHONPATH": str(trees[name])}).stdout
                    for case, (t, amount) in json.loads(out).items():
                        times[name].setdefault(case, []).append(t)
                        work_of[case] = amount
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        result = {}
        print(f"{'case':30} {'A median s':>11} {'B median s':>11} {'A MB/s':>9} {'B MB/s':>9} "
              f"{'A/B':>7}")
        for case in times["A"]:
            a = statistics.median(times["A"][case])
            b = statistics.median(times["B"][case])
            result[case] = {"a_s": a, "b_s": b, "ratio": a / b,
                            "a_all": times["A"][case], "b_all": times["B"][case]}
            rates = ""
            if (amount := work_of[case]) is not None:
                result[case].update(a_rate=amount / a, b_rate=amount / b)
                rates = f"{amount / a:9.1f} {amount / b:9.1f}"
            print(f"{case:30} {a:11.4f} {b:11.4f} {rates or ' ' * 19} {a / b:7.3f}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
