"""Cost of the incremental's check of the parent members it refers to (engine/incremental.py
_check_referenced), A/B in one run: the same incremental of an unchanged LMDB store with and
without that part of the check, interleaved rounds, medians of wall and CPU seconds.

Usage: python benchmarks/parent_check_cost.py blocks|records [ROUNDS] [DIR]
Set COLD=1 to evict the parent from the page cache (posix_fadvise DONTNEED) before each run.
A third mode, `inflate` (INFLATE=1 adds it to the rounds), is the check as it is plus every
referenced parent chunk inflated and its payload checked against its entry (check_payload:
count, keys, key digest; the payload XXH3 by read_chunk), in INFLATE_THREADS threads
(default 2): what closing the "crafted parent" gap of docs/INCREMENTAL.md would cost.
Sizes: blocks 6,000 x 16 KiB (content keys: values not read), records 100,000 x 1,000 bytes.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

from dsbackup import datasets
from dsbackup.engine import incremental as inc
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def _cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    kind = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    d = Path(sys.argv[3] if len(sys.argv) > 3 else f"/tmp/parent-check-{kind}")
    d.mkdir(parents=True, exist_ok=True)
    src = d / "src"
    if not src.exists():
        rng = random.Random(1)
        if kind == "blocks":
            recs = dict(datasets.iter_blocks(6000, block_size=16384))
        else:
            recs = {b"/r/%08d" % i: rng.randbytes(1000) for i in range(100000)}
        datasets.write_lmdb(str(src), iter(sorted(recs.items())))
    mgr = BackupManager(BackupConfig(workers=2))
    full = d / "full.tar.gz"
    if not full.exists():
        mgr.create_backup(f"lmdb:{src}", full)
    real = inc._check_referenced
    modes = ("without", "with", "inflate") if os.environ.get("INFLATE") else ("without", "with")
    threads = int(os.environ.get("INFLATE_THREADS", "2"))

    def inflating(r, levels, tmp) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from dsbackup.archive.refcheck import resolved_references
        from dsbackup.archive.verify import check_payload

        real(r, levels, tmp)

        def one(item) -> None:
            holder, s = item
            check_payload(holder.path, s, holder.entry(s),
                          holder.read_chunk(s, into=holder.reused_payload))

        with ThreadPoolExecutor(threads) as pool:
            for k, seqs, _refs in resolved_references(r, levels):
                list(pool.map(one, ((levels[k], int(s)) for s in seqs), chunksize=64))

    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            inc._check_referenced = {"with": real, "inflate": inflating}.get(
                mode, lambda *a: None)
            out = d / f"inc-{mode}.tar.gz"
            out.unlink(missing_ok=True)
            if os.environ.get("COLD"):
                fd = os.open(full, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            c, t = _cpu(), time.perf_counter()
            mgr.create_backup(f"lmdb:{src}", out, parent=full)
            wall[mode].append(time.perf_counter() - t)
            cpu[mode].append(_cpu() - c)
    print(json.dumps({"kind": kind, "cold": bool(os.environ.get("COLD")),
                      "parent_bytes": full.stat().st_size,
                      "wall_median": {k: statistics.median(v) for k, v in wall.items()},
                      "cpu_median": {k: statistics.median(v) for k, v in cpu.items()}}))


if __name__ == "__main__":
    main()
