"""Benchmark: restore of 256 KiB blocks into an empty LMDB, datastore path vs native writer.

    python benchmarks/bench_restore_lmdb.py [--blocks N] [--rounds R] [--json OUT]

The dataset is ``dsbackup.datasets.iter_blocks(N)`` (default 1024 blocks = 256 MiB) in an LMDB
store, backed up once with BackupManager. Scenarios, alternated R times in this run on the
same archive (best round reported):

- ``datastore``: restore into an LMDB datastore object opened by the caller (py-lmdb
  ``putmulti`` of decoded records: the path every non-URI target takes);
- ``native``: restore into a fresh ``lmdb:`` URI (``LmdbPayloadWriter``: verified payloads
  written by liblmdb, no Python object per record).

Reported: MB (1e6 bytes of keys + values) per CPU-second of this process (user + system,
all threads) and wall MB/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    from dsbackup import datasets
    from dsbackup.datastores import open_datastore
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    d = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    try:
        datasets.write_lmdb(str(d / "src"), datasets.iter_blocks(args.blocks))
        mgr = BackupManager(BackupConfig(workers=args.workers))
        mgr.create_backup(f"lmdb:{d / 'src'}", d / "a.tar.gz")
        results: dict[str, list[dict[str, float]]] = {"datastore": [], "native": []}
        for r in range(args.rounds):
            for name in ("datastore", "native"):
                dst = d / f"{name}{r}"
                c0, t0 = cpu(), time.perf_counter()
                if name == "native":
                    res = mgr.restore_backup(d / "a.tar.gz", f"lmdb:{dst}")
                else:
                    with open_datastore(f"lmdb:{dst}") as ds:
                        res = mgr.restore_backup(d / "a.tar.gz", ds)
                c1, t1 = cpu(), time.perf_counter()
                mb = res.bytes_written / 1e6
                results[name].append({"mb": mb, "cpu_s": c1 - c0, "wall_s": t1 - t0,
                                      "mb_per_cpu_s": mb / (c1 - c0),
                                      "wall_mb_s": mb / (t1 - t0)})
                shutil.rmtree(dst)
        best = {k: max(v, key=lambda x: x["mb_per_cpu_s"]) for k, v in results.items()}
        for k, b in best.items():
            print(f"{k:10s} {b['mb']:.0f} MB  {b['mb_per_cpu_s']:.0f} MB/cpu-s  "
                  f"{b['wall_mb_s']:.0f} MB/s wall  (cpu {b['cpu_s']:.2f} s, "
                  f"wall {b['wall_s']:.2f} s)")
        if args.json:
            Path(args.json).write_text(json.dumps({"blocks": args.blocks, "rounds": results,
                                                   "best": best}, indent=1))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
