"""How far the inflating pool may run ahead of the LMDB writer in a native restore: in-process
`restore_archive` of one archive into new LMDB directories, for several (batch MiB, batches
ahead) pairs interleaved (order reversed every other round), wall and CPU seconds (of this
process: the pool's threads included) and their medians.

Usage: python benchmarks/restore_ahead.py ARCHIVE [--rounds N] [--work DIR] [B:A ...]
e.g.   python benchmarks/restore_ahead.py small.tar.gz 8:1 8:2 4:2 4:3 16:1
B:A = batch_bytes in MiB, NATIVE_BATCHES_AHEAD (engine/restore.py); default 8:1 4:3 (the
settings before and after the `fastread` branch). The CLI's allocator tuning is applied first,
as `dsbackup restore` does (cli/main.py).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv: list[str]) -> None:
    from dsbackup.allocator import single_arena, tune_allocator
    from dsbackup.engine import restore as restore_mod

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive")
    ap.add_argument("variants", nargs="*", default=["8:1", "4:3"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--work", default="/tmp/restore-ahead")
    a = ap.parse_args(argv)
    tune_allocator()
    single_arena()
    variants = [tuple(int(x) for x in v.split(":")) for v in a.variants]
    res: dict[tuple[int, ...], list[tuple[float, float]]] = {v: [] for v in variants}
    out = Path(a.work)
    for r in range(a.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            batch_mib, ahead = v
            restore_mod.NATIVE_BATCHES_AHEAD = ahead
            shutil.rmtree(out, ignore_errors=True)
            t0, c0 = time.perf_counter(), time.process_time()
            restore_mod.restore_archive(a.archive, f"lmdb:{out}", workers=2,
                                        batch_bytes=batch_mib << 20)
            res[v].append((time.perf_counter() - t0, time.process_time() - c0))
    shutil.rmtree(out, ignore_errors=True)
    base = variants[0]
    for v, x in res.items():
        per = statistics.median(b[0] / y[0] for b, y in zip(res[base], x))
        print(f"batch {v[0]} MiB, {v[1]} ahead: wall {statistics.median(y[0] for y in x):.3f} s, "
              f"CPU {statistics.median(y[1] for y in x):.3f} s, first/this per round {per:.3f}  "
              f"{[round(y[0], 3) for y in x]}")


if __name__ == "__main__":
    main(sys.argv[1:])
