"""What the restore's checks before writing cost (dsbackup.archive.summarycheck): the summary
against the index (check_summary) and an incremental's references against its parent chain
(check_references), next to a whole restore of the same archive into LMDB. The checks' cost is
the difference between opening the archive as a restore does (layout, parents) with and
without them, each on a fresh reader.

    PYTHONPATH=src python benchmarks/restore_summary_check.py [--records N] [--rounds R]

An LMDB store of N small records is backed up with --chunk-size 4 (N/4 chunks), once with a
single index and once paged, and an unchanged incremental of each is made (every chunk a
reference). Medians of R rounds; CPU (process) time next to wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _timed(fn, rounds: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()

    from dsbackup import datasets
    from dsbackup.archive.reader import ArchiveReader
    from dsbackup.archive.summarycheck import check_references, check_summary
    from dsbackup.archive.verify import check_layout
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig
    from dsbackup.engine.restore import restore_archive

    out: dict[str, dict[str, float]] = {}
    counter = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        store = d / "store"
        datasets.write_lmdb(str(store), datasets.iter_small(args.records))
        for paged in ("never", "always"):
            cfg = BackupConfig(chunk_size=4, paged_index=paged)
            full, inc = d / f"full-{paged}.tar.gz", d / f"inc-{paged}.tar.gz"
            BackupManager(cfg).create_backup(f"lmdb:{store}", full)
            BackupManager(cfg).create_backup(f"lmdb:{store}", inc, parent=full)
            for name, path in (("full", full), ("incremental", inc)):
                def opened(path=path, checked=False) -> None:
                    # what a restore does before writing: open, layout (every page of a
                    # paged index), the parents; then the checks measured here
                    with ArchiveReader(path) as r:
                        r.index.sequential()
                        check_layout(r)
                        chain = r.open_parents()
                        if checked:
                            check_summary(r, "x")
                            if chain is not None:
                                check_references(r, chain, "x")

                base_wall, base_cpu = _timed(opened, args.rounds)
                wall, cpu = _timed(lambda path=path: opened(path, True), args.rounds)
                wall, cpu = wall - base_wall, cpu - base_cpu
                with ArchiveReader(path) as r:
                    chunks = r.chunk_count

                def restore(path=path, tag=f"{paged}-{name}") -> None:
                    restore_archive(path, f"lmdb:{d / f'r-{tag}-{next(counter)}'}")

                rwall, rcpu = _timed(restore, max(1, args.rounds // 2))
                key = f"{name}, {'paged' if paged == 'always' else 'single'} index"
                out[key] = {"chunks": chunks, "check_wall_s": round(wall, 4),
                            "check_cpu_s": round(cpu, 4), "restore_wall_s": round(rwall, 3),
                            "restore_cpu_s": round(rcpu, 3),
                            "check_cpu_share_of_restore": round(cpu / rcpu, 4)}
                print(key, out[key], flush=True)
    result = {"records": args.records, "rounds": args.rounds,
              "load": os.getloadavg(), "results": out}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
