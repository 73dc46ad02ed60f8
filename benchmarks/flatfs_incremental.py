"""Incremental backups of a large flatfs blockstore against listing it, in one run.

Usage: python benchmarks/flatfs_incremental.py [--files N] [--dir DIR] [--archives DIR]
       [--rounds R] [--new-percent P] [--json FILE]

Generates (once; a marker beside it records the count) a go-ds-flatfs directory of N blocks
(default 2,000,000) of 1-2 KiB, each named by the base32 sha2-256 multihash of its value as
Kubo names them, and a full backup of it (the parent). Then, in interleaved rounds (order
reversed every round), times:

- ``find``: ``find DIR -type f | wc -l`` (warm cache: the tree is listed once before);
- ``full``: a full backup of the store (``BackupManager.create_backup``, in process);
- ``incremental``: an incremental backup of the unchanged store against the parent;
- ``new``: P% (default 1) new blocks added, an incremental backup against the parent (the new
  blocks are removed again after it, untimed).

Reports medians and the ratios the issue asks for (incremental / find, incremental / full,
new / full), the load average, and the archives' stored/referenced chunks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from dsbackup import datasets  # noqa: E402
from dsbackup.archive.reader import ArchiveReader  # noqa: E402
from dsbackup.datastores.flatfs import FlatfsDatastore  # noqa: E402
from dsbackup.engine.backup import BackupManager  # noqa: E402
from dsbackup.engine.config import BackupConfig  # noqa: E402


def _blocks(n: int, seed: int):
    """``n`` (name, value) blocks: 16 random bytes then word text, 1-2 KiB."""
    rng = random.Random(seed)
    corpus = datasets.zipf_text(seed + 1000, 4 << 20)
    for _ in range(n):
        size = rng.randrange(1024, 2049)
        off = rng.randrange(0, len(corpus) - size)
        value = rng.randbytes(16) + corpus[off:off + size - 16]
        yield base64.b32encode(b"\x12\x20" + hashlib.sha256(value).digest()).rstrip(b"="), value


def write_blocks(root: Path, n: int, seed: int, keep: bool = False) -> list[Path]:
    """Write blocks straight into their shard directories (next-to-last/2); their paths
    with ``keep``."""
    rootb = os.fsencode(root)
    made: set[bytes] = set()
    paths = []
    for name, value in _blocks(n, seed):
        d = b"%s/%s" % (rootb, name[-3:-1])
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        path = b"%s/%s.data" % (d, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
        if keep:
            paths.append(Path(os.fsdecode(path)))
    return paths


GEN_PROCS = 4


def _write_part(root: Path, n: int, seed: int) -> None:
    write_blocks(root, n, seed)


def ensure_store(root: Path, n: int) -> None:
    marker = root.parent / f".{root.name}.complete"
    if marker.is_file() and marker.read_text().strip() == str(n):
        return
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    marker.unlink(missing_ok=True)
    FlatfsDatastore(root).close()  # SHARDING and _README, as Kubo writes them
    t = time.perf_counter()
    parts = GEN_PROCS
    with multiprocessing.Pool(parts) as pool:  # the same blocks for the same n
        pool.starmap(_write_part, [(root, n // parts + (i < n % parts), 7 + i)
                                   for i in range(parts)])
    marker.write_text(f"{n}\n")
    print(f"generated {n} blocks in {time.perf_counter() - t:.1f} s", flush=True)


def backup(uri: str, out: Path, parent: Path | None = None) -> tuple[float, dict]:
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    BackupManager(BackupConfig()).create_backup(uri, out, parent=parent)
    secs = time.perf_counter() - t
    with ArchiveReader(out) as r:
        s = r.summary
        info = {"chunks": r.chunk_count, "stored": s.get("stored_chunks", r.chunk_count),
                "read": s.get("chunks_read_to_compare", 0), "size": out.stat().st_size}
    return secs, info


def find_count(root: Path) -> tuple[float, int]:
    t = time.perf_counter()
    out = subprocess.run(f"find '{root}' -type f | wc -l", shell=True, check=True,
                         capture_output=True, text=True).stdout
    return time.perf_counter() - t, int(out)


def no_full(root: Path, uri: str, work: Path, args: argparse.Namespace) -> int:
    """find against the unchanged incremental, the parent made without a full backup."""
    parent = work / "parent-nofull.tar.gz"
    if not parent.is_file():
        empty = work / "empty-flatfs"
        FlatfsDatastore(empty).close()
        seed = work / "empty.tar.gz"
        seed.unlink(missing_ok=True)
        BackupManager(BackupConfig(chunk_size=770)).create_backup(f"flatfs:{empty}", seed)
        secs, info = backup(uri, parent, seed)
        print(f"parent (incremental of an empty store): {secs:.1f} s, {info['stored']} "
              f"chunks stored", flush=True)
    times: dict[str, list[float]] = {"find": [], "incremental": []}
    infos: dict[str, dict] = {}
    load0 = os.getloadavg()
    for rnd in range(args.rounds):
        for name in (list(times) if rnd % 2 == 0 else list(times)[::-1]):
            if name == "find":
                secs, _ = find_count(root)
            else:
                secs, infos["incremental"] = backup(uri, work / "inc.tar.gz", parent)
                (work / "inc.tar.gz").unlink()
            times[name].append(secs)
            print(f"round {rnd} {name:<12} {secs:7.3f} s  load {os.getloadavg()[0]:.1f}",
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["incremental"] / med["find"]
    inc = infos["incremental"]
    print(f"{args.files} files, {args.rounds} rounds, medians: find {med['find']:.3f} s, "
          f"unchanged incremental {med['incremental']:.3f} s (stored {inc['stored']}/"
          f"{inc['chunks']} chunks, read {inc['read']}), incremental/find {ratio:.3f}; load "
          f"average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "files": args.files, "cpus": os.cpu_count(), "rounds": args.rounds,
            "loadavg_start": load0, "loadavg_end": os.getloadavg(), "seconds_all": times,
            "median_s": med, "incremental/find": ratio, "archives": infos}, indent=1))
    return 0


def listing_only(root: Path, args: argparse.Namespace) -> int:
    """``find`` against ``FlatfsDatastore.listing()`` (what an unchanged incremental lists)."""
    times: dict[str, list[float]] = {"find": [], "listing": []}
    ds = FlatfsDatastore(root, readonly=True)
    load0 = os.getloadavg()
    for rnd in range(args.rounds):
        for name in (list(times) if rnd % 2 == 0 else list(times)[::-1]):
            if name == "find":
                secs, n = find_count(root)
            else:
                t = time.perf_counter()
                listing = ds.listing()
                secs = time.perf_counter() - t
                assert listing.keys is not None and not listing.audit.count
                n = len(listing.keys)
            times[name].append(secs)
            print(f"round {rnd} {name:<8} {secs:7.3f} s ({n} files) load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.files} files, {args.rounds} rounds, medians: find {med['find']:.3f} s, "
          f"listing {med['listing']:.3f} s, listing/find {med['listing'] / med['find']:.3f}; "
          f"load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "files": args.files, "cpus": os.cpu_count(), "rounds": args.rounds,
            "loadavg_start": load0, "loadavg_end": os.getloadavg(), "seconds_all": times,
            "median_s": med, "listing/find": med["listing"] / med["find"]}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2_000_000)
    ap.add_argument("--dir", default=os.environ.get("DSBACKUP_BENCH_DIR", "/tmp/flatinc-data"))
    ap.add_argument("--archives", default=None, help="where the archives go (default --dir)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-percent", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-full", action="store_true",
                    help="no full-backup rows: the parent is an incremental of an empty "
                         "store's archive (chunk size 770), which reads every block through "
                         "the incremental path; then find against the unchanged incremental")
    ap.add_argument("--listing-only", action="store_true",
                    help="time find against the incremental's native listing (keys sorted, "
                         "file audit) only: no backups")
    args = ap.parse_args(argv)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"flatfs-{args.files}"
    ensure_store(root, args.files)
    uri = f"flatfs:{root}"
    work = Path(args.archives) if args.archives else work
    parent = work / "parent.tar.gz"
    find_count(root)  # warm the dentry and inode caches
    if args.listing_only:
        return listing_only(root, args)
    if args.no_full:
        return no_full(root, uri, work, args)
    if not parent.is_file():
        secs, info = backup(uri, parent)
        print(f"parent: {secs:.1f} s, {info['chunks']} chunks, {info['size'] / 2**20:.0f} MiB",
              flush=True)
    n_new = max(1, int(args.files * args.new_percent / 100))
    load0 = os.getloadavg()
    times: dict[str, list[float]] = {"find": [], "full": [], "incremental": [], "new": []}
    infos: dict[str, dict] = {}

    def run(name: str, rnd: int) -> None:
        if name == "find":
            secs, count = find_count(root)
            infos["find"] = {"files": count}
        elif name == "full":
            secs, infos["full"] = backup(uri, work / "full.tar.gz")
            (work / "full.tar.gz").unlink()
        elif name == "incremental":
            secs, infos["incremental"] = backup(uri, work / "inc.tar.gz", parent)
            (work / "inc.tar.gz").unlink()
        else:
            added = write_blocks(root, n_new, seed=1000 + rnd, keep=True)
            try:
                secs, infos["new"] = backup(uri, work / "new.tar.gz", parent)
            finally:
                for p in added:
                    p.unlink()
            (work / "new.tar.gz").unlink()
        times[name].append(secs)
        print(f"round {rnd} {name:<12} {secs:8.3f} s  load {os.getloadavg()[0]:.1f}",
              flush=True)

    order = list(times)
    for rnd in range(args.rounds):
        for name in (order if rnd % 2 == 0 else order[::-1]):
            run(name, rnd)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"incremental/find": med["incremental"] / med["find"],
              "incremental/full": med["incremental"] / med["full"],
              "new/full": med["new"] / med["full"]}
    load1 = os.getloadavg()
    print(f"\n{args.files} files ({infos['find']['files']} by find), {os.cpu_count()} CPUs, "
          f"{args.rounds} interleaved rounds, medians; load average {load0[0]:.1f} at the start, "
          f"{load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end")
    for k, v in med.items():
        extra = infos.get(k, {})
        detail = (f"  stored {extra['stored']}/{extra['chunks']} chunks, read "
                  f"{extra['read']}" if "stored" in extra else "")
        print(f"  {k:<12} {v:8.3f} s{detail}")
    for k, v in ratios.items():
        print(f"  {k:<18} {v:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "files": args.files, "cpus": os.cpu_count(), "rounds": args.rounds,
            "new_percent": args.new_percent, "loadavg_start": load0, "loadavg_end": load1,
            "seconds_all": times, "median_s": med, "ratios": ratios, "archives": infos},
            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
