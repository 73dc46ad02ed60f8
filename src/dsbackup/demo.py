"""`make demo`: the main job end to end on a generated IPFS-like LMDB datastore.

Generates ~400 MB of 256 KiB blocks (`/blocks/CIQ...`, half random, half text) plus small
`/pins/...` records, backs it up, verifies the archive deeply, restores it into a fresh LMDB,
compares every record, and prints sizes and throughput.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dsbackup import datasets
from dsbackup._ext.checksum import Xxh3_128
from dsbackup.cli._common import human_bytes
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def store_digest(uri: str) -> tuple[int, str]:
    """(records, XXH3-128 over every key and value in order) of a datastore."""
    from dsbackup.datastores import open_datastore

    h = Xxh3_128()
    n = 0
    with open_datastore(uri, readonly=True) as ds:
        for keys, values in ds.scan_batches():
            for k, v in zip(keys, values):
                h.update(len(k).to_bytes(4, "little"))
                h.update(k)
                h.update(len(v).to_bytes(8, "little"))
                h.update(v)
            n += len(keys)
    return n, h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsbackup.demo", description=__doc__)
    ap.add_argument("--size-mb", type=int, default=400, help="size of the blocks (MB)")
    ap.add_argument("--pins", type=int, default=20000, help="number of small /pins records")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)

    work = Path(args.dir or tempfile.mkdtemp(prefix="dsbackup-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    src, dst, archive = work / "source-lmdb", work / "restored-lmdb", work / "backup.tar.gz"
    for p in (src, dst):
        shutil.rmtree(p, ignore_errors=True)
    archive.unlink(missing_ok=True)
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        nblocks = max(1, args.size_mb * 1_000_000 // datasets.BLOCK_SIZE)
        t = time.perf_counter()
        recs = itertools.chain(datasets.iter_blocks(nblocks), datasets.iter_pins(args.pins))
        n, nbytes = datasets.write_lmdb(str(src), recs)
        say(f"generated {src}: {n} records ({nblocks} blocks of 256 KiB, {args.pins} pins), "
            f"{human_bytes(nbytes)} in {time.perf_counter() - t:.1f} s")

        mgr = BackupManager(BackupConfig(workers=args.workers))
        meta = mgr.create_backup(f"lmdb:{src}", archive)
        s = meta.statistics
        say(f"backup  -> {archive}: {human_bytes(meta.compressed_size)} "
            f"(ratio {meta.compression_ratio:.2f}, {meta.chunks} chunks) in {s.duration_s:.2f} s"
            f" = {human_bytes(s.throughput_bytes_s)}/s, {s.workers} workers ({s.mode})")

        rep = mgr.verify_backup(archive, deep=True)
        if not rep.ok:
            say("verify FAILED:\n  " + "\n  ".join(rep.errors))
            return 3
        say(f"verify  (deep): OK, {rep.records} records in {rep.duration_s:.2f} s = "
            f"{human_bytes(rep.bytes_checked / max(rep.duration_s, 1e-9))}/s of archive")

        res = mgr.restore_backup(archive, f"lmdb:{dst}")
        say(f"restore -> {dst}: {res.records_written} records in {res.duration_s:.2f} s = "
            f"{human_bytes(res.throughput_bytes_s)}/s")

        t = time.perf_counter()
        a, b = store_digest(f"lmdb:{src}"), store_digest(f"lmdb:{dst}")
        if a != b:
            say(f"compare FAILED: source {a} != restored {b}")
            return 3
        say(f"compare: source and restored store are identical ({a[0]} records, digest "
            f"{a[1][:16]}...) [{time.perf_counter() - t:.1f} s]")
        return 0
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            say(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
