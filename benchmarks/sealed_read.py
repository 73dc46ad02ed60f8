"""The reader's side of a restore, plain and encrypted: every chunk read and checked by 2
threads (what a restore's pool does before the target is written), interleaved, medians.

Usage: python benchmarks/sealed_read.py [--datasets blocks,small] [--rounds 9] [--passes 3]
       [--threads 2] [--before SRC] [--json FILE]

A restore's time on a VM also holds the target's writes into fresh page cache, which swing by
up to 4x from run to run (docs/PERFORMANCE.md, "why single restore times swing"); this leaves
them out, so what the decryption costs shows. Each row is a child process that opens the
archive once and reads all chunks `--passes` times with `ArchiveReader.read_chunk` in a thread
pool; its CPU time (user + system) and the wall time of the passes are reported. Rows: plain
and encrypted archives of the same data set (written once, raw key file, `--workers 2`), read
by this checkout's ``src``, and with ``--before SRC`` the encrypted archive read by another
version's ``src`` (its extension built) in the same rounds. Order reversed every round.
Data sets: benchdata.py (scale with DSBACKUP_BENCH_SCALE).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CHILD = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
from dsbackup.archive import crypto
from dsbackup.archive.reader import ArchiveReader
arc, key, passes, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with crypto.using_key(crypto.load_key_file(key) if key else None):
    r = ArchiveReader(arc)
    n = r.chunk_count
    c0, t0 = time.process_time(), time.perf_counter()
    total = 0
    for _ in range(passes):
        with ThreadPoolExecutor(threads) as pool:
            total += sum(pool.map(lambda i: len(r.read_chunk(i)), range(n)))
    print(time.process_time() - c0, time.perf_counter() - t0, total)
"""


def child(src: str, arc: Path, key: Path | None, passes: int, threads: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(arc), str(key or ""), str(passes),
                          str(threads)], env=dict(os.environ, PYTHONPATH=src),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"reader child failed: {out.stderr[-400:]}")
    cpu, wall, _total = out.stdout.split()
    return float(cpu), float(wall)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="blocks,small")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--before", type=Path, default=None,
                    help="the src directory of another version: its encrypted row too")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    # byte-compiled as an installed package is, even where PYTHONDONTWRITEBYTECODE is set
    for tree in [ROOT / "src", *([args.before] if args.before is not None else [])]:
        compileall.compile_dir(str(Path(tree) / "dsbackup"), quiet=1)
    import benchdata

    work = Path(tempfile.mkdtemp(prefix="dsbackup-sealedread-"))
    key = work / "bench.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    src = str(ROOT / "src")
    results: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "scale": benchdata.scale(), "threads": args.threads,
                     "passes": args.passes, "rounds": args.rounds,
                     "loadavg_start": os.getloadavg(), "datasets": {}}
    try:
        for name in args.datasets.split(","):
            d = benchdata.blocks_lmdb() if name == "blocks" else benchdata.small_lmdb()
            plain, enc = work / f"{name}-plain.tar.gz", work / f"{name}-enc.tar.gz"
            for arc, extra in ((plain, []), (enc, ["--encrypt", "--key-file", str(key)])):
                subprocess.run([sys.executable, "-m", "dsbackup", "backup", "--workers", "2",
                                *extra, d.uri, str(arc)], env=dict(os.environ, PYTHONPATH=src),
                               check=True, stdout=subprocess.DEVNULL)
            rows: dict[str, tuple[str, Path, Path | None]] = {
                "plain": (src, plain, None), "encrypted": (src, enc, key)}
            if args.before is not None:
                rows["encrypted (before)"] = (str(args.before.resolve()), enc, key)
            samples: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
            for r in range(args.rounds):
                for label in (list(rows) if r % 2 == 0 else list(rows)[::-1]):
                    s, arc, k = rows[label]
                    samples[label].append(child(s, arc, k, args.passes, args.threads))
                    cpu, wall = samples[label][-1]
                    print(f"  round {r + 1}: {name:6} {label:20} {cpu:7.3f} s CPU {wall:7.3f} s "
                          "wall", file=sys.stderr, flush=True)
            out: dict = {"chunks_bytes": enc.stat().st_size, "rows": {}, "ratios": {}}
            for label, s in samples.items():
                out["rows"][label] = {"cpu": statistics.median(c for c, _ in s),
                                      "wall": statistics.median(w for _, w in s),
                                      "cpu_all": [c for c, _ in s], "wall_all": [w for _, w in s]}
            for label, s in samples.items():
                if label == "plain":
                    continue
                for i, what in ((0, "cpu"), (1, "wall")):
                    per = [a[i] / b[i] for a, b in zip(s, samples["plain"])]
                    ratio = {"of_medians": statistics.median(a[i] for a in s)
                             / statistics.median(b[i] for b in samples["plain"]),
                             "median_of_rounds": statistics.median(per), "per_round": per}
                    out["ratios"][f"{label} / plain {what}"] = ratio
                    print(f"{name:6} {label + ' / plain ' + what:34} {ratio['of_medians']:.3f} "
                          f"(median of rounds {ratio['median_of_rounds']:.3f})")
            results["datasets"][name] = out
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print(f"load average: start {results['loadavg_start']}, end {results['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
