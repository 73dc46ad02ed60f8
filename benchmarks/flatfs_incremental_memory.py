"""Peak memory and CPU of a flatfs incremental backup over ``max_names`` (bucket by bucket,
docs/INCREMENTAL.md "A store over max_names") against the in-memory listing, in one run.

Usage: python benchmarks/flatfs_incremental_memory.py [--files N[,N...]] [--max-names M]
       [--rounds R] [--dir DIR] [--json FILE]

For each N (default 200000,1600000) generates once (a marker records the count) a go-ds-flatfs
store (``next-to-last/2``) of N small blocks (80-400 bytes, half of them text) under trusted
names (the base32 of a sha2-256 multihash; the value is not hashed: generation speed) and
its full backup, the parent. Then in interleaved rounds (order reversed every round) runs the
CLI as a child process, an incremental backup of the unchanged store against the parent:

- ``memory``: ``flatfs:DIR?max_names=<2 N>``: the whole listing held (FlatKeys);
- ``buckets``: ``flatfs:DIR?max_names=M`` (default 50000): the listing spilled into key-range
  buckets, at most about M names held.

Each child's wall time, CPU time (user + system, from wait4) and peak RSS (``ru_maxrss``) are
recorded; medians are reported, with the CPU ratio buckets / memory for each N and the peak
RSS of each row at the largest N over the smallest (flat: ~1.0). The tree is byte-compiled
first and the children run without PYTHONDONTWRITEBYTECODE.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
ALPHABET = b"abcdefghijklmnopqrstuvwxyz "


def write_store(root: Path, n: int, seed: int = 1) -> None:
    """``n`` blocks under trusted names, written straight to files."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "SHARDING").write_text("/repo/flatfs/shard/v1/next-to-last/2\n")
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(n):
        name = base64.b32encode(b"\x12\x20" + rng.randbytes(32)).rstrip(b"=").decode()
        shard = name[-3:-1]
        if shard not in made:
            (root / shard).mkdir(exist_ok=True)
            made.add(shard)
        size = rng.randrange(80, 400)
        value = rng.randbytes(size) if i % 2 else bytes(rng.choices(ALPHABET, k=size))
        fd = os.open(f"{root}/{shard}/{name}.data", flags, 0o644)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)


def child(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS bytes) of one child process; it must exit 0."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    p.stderr.close() if p.stderr else None
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {p.returncode}: {err.strip()}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="200000,1600000")
    ap.add_argument("--max-names", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dir", default=os.environ.get("DSBACKUP_BENCH_DIR", "/tmp/flatmem-data"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.files.split(",")]
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    compileall.compile_dir(str(SRC), quiet=1)
    env = dict(os.environ, PYTHONPATH=str(SRC), DSBACKUP_PRESTART="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    py = [sys.executable, "-m", "dsbackup", "backup"]
    stores = {}
    for n in sizes:
        root, marker, parent = base / f"s{n}" / "blocks", base / f"s{n}.done", base / f"p{n}.tar.gz"
        if not marker.exists() or marker.read_text() != str(n):
            subprocess.run(["rm", "-rf", str(base / f"s{n}"), str(parent)], check=True)
            t = time.perf_counter()
            write_store(root, n)
            child([*py, f"flatfs:{root}?max_names={2 * n}", str(parent), "--workers",
                   str(args.workers)], env)
            marker.write_text(str(n))
            print(f"store of {n} files and its full backup made in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        stores[n] = (root, parent)
    rows = {"memory": lambda n: 2 * n, "buckets": lambda n: args.max_names}
    got: dict[tuple[int, str], list[tuple[float, float, int]]] = {}
    for rnd in range(args.rounds):
        order = [(n, r) for n in sizes for r in rows]
        for n, row in order if rnd % 2 == 0 else reversed(order):
            root, parent = stores[n]
            out = base / f"inc-{n}-{row}.tar.gz"
            res = child([*py, f"flatfs:{root}?max_names={rows[row](n)}", str(out), "--parent",
                         str(parent), "--workers", str(args.workers), "--overwrite"], env)
            got.setdefault((n, row), []).append(res)
            print(f"round {rnd + 1} {n:>9} {row:<8} wall {res[0]:6.2f} s  cpu {res[1]:6.2f} s"
                  f"  peak RSS {res[2] / 2**20:7.1f} MiB", flush=True)
    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3))
           for k, v in got.items()}
    print(f"\nmedians of {args.rounds} rounds (max_names={args.max_names} for buckets; load "
          f"{os.getloadavg()[0]:.1f}):")
    for (n, row), (w, c, m) in sorted(med.items()):
        print(f"{n:>9} {row:<8} wall {w:6.2f} s  cpu {c:6.2f} s  peak RSS {m / 2**20:7.1f} MiB")
    report = {"max_names": args.max_names, "rounds": args.rounds, "medians": {
        f"{n}/{row}": {"wall_s": w, "cpu_s": c, "peak_rss": m}
        for (n, row), (w, c, m) in med.items()}, "ratios": {}}
    for n in sizes:
        r = med[(n, "buckets")][1] / med[(n, "memory")][1]
        report["ratios"][f"cpu buckets/memory {n}"] = r
        print(f"CPU buckets / memory at {n}: {r:.2f}")
    lo, hi = min(sizes), max(sizes)
    for row in rows:
        r = med[(hi, row)][2] / med[(lo, row)][2]
        report["ratios"][f"peak RSS {row} {hi}/{lo}"] = r
        print(f"peak RSS {row} at {hi} / at {lo}: {r:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
