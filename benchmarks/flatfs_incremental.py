"""Incremental backups of a large flatfs blockstore against listing it, in one run.

Usage: python benchmarks/flatfs_incremental.py [--files N] [--sizes small|kubo|256k]
       [--chunk-size auto|N[,N...]] [--[no-]du-cache] [--dir DIR] [--archives DIR] [--rounds R]
       [--new-percent P] [--max-names M] [--json FILE]

Generates (once; a marker beside it records the count) a go-ds-flatfs directory of N blocks
(default 2,000,000), each named by the base32 sha2-256 multihash of its value as Kubo names
them (``next-to-last/2`` shards, ``<key>.data``), and a full backup of it (the parent, one per
chunk size). ``--sizes`` picks the block sizes:

- ``small`` (default): 1-2 KiB each, uniform (16 random bytes, then word text);
- ``256k``: every block 262,144 bytes, a file leaf of Kubo's default chunker (size-262144);
- ``kubo``: the blocks ``ipfs add`` makes of a set of files (``kubo_blocks``): file sizes
  log-uniform from 512 B to 32 MiB; a file of up to 256 KiB is one block; a larger one is cut
  into 256 KiB raw leaves (the last one shorter) under a balanced dag-pb tree of at most 174
  links a node (~50 bytes a link); one directory node (0.5-4 KiB) per 20 files. About 88% of
  the blocks and 97% of the bytes are 256 KiB leaves; the mean block is ~230 KiB.

Leaves and small files are word text after 16 random bytes (deflate keeps ~40%), tree and
directory nodes random bytes (hashes). The kubo and 256k stores get a ``diskUsage.cache`` as
Kubo keeps one (``--no-du-cache``: none; small has none unless ``--du-cache``, as in the first
runs): without it the automatic chunk size has no mean block size and falls back to 1000
records. ``--chunk-size`` sets the backups' chunk size (``auto``,
the default: the store's mean block size decides, ~1 MiB a chunk; docs/INCREMENTAL.md);
several, comma-separated, are measured in the same interleaved rounds. Then, in interleaved
rounds (order reversed every round), times:

- ``find``: ``find DIR -type f | wc -l`` (warm cache: the tree is listed once before);
- ``full``: a full backup of the store (``BackupManager.create_backup``, in process);
- ``incremental``: an incremental backup of the unchanged store against the parent;
- ``new``: P% (default 1) new blocks added (drawn as the store's were), an incremental backup
  against the parent (the new blocks are removed again after it, untimed).

The store's URI holds ``max_names`` = ``--max-names`` (default: twice the file count, so the
incremental holds its listing in memory, the listing-speed path; a smaller value measures the
bucket-by-bucket path a store over ``max_names`` takes, docs/INCREMENTAL.md).

Reports medians, per-round ratios and the ratios the issue asks for (incremental / find,
incremental / full, new / full), each backup's CPU time (this process and its children), the
load average, and the archives' chunks (index entries), stored chunks and size.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
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
from dsbackup.datastores.flatfs_layout import (  # noqa: E402
    DISK_USAGE_FILE,
    encode_disk_usage,
    walk_disk_usage,
)
from dsbackup.engine.backup import BackupManager  # noqa: E402
from dsbackup.engine.config import BackupConfig  # noqa: E402
from dsbackup.pipeline import forkserver  # noqa: E402


def _blocks(n: int, seed: int):
    """``n`` (name, value) blocks: 16 random bytes then word text, 1-2 KiB."""
    rng = random.Random(seed)
    corpus = datasets.zipf_text(seed + 1000, 4 << 20)
    for _ in range(n):
        size = rng.randrange(1024, 2049)
        off = rng.randrange(0, len(corpus) - size)
        value = rng.randbytes(16) + corpus[off:off + size - 16]
        yield base64.b32encode(b"\x12\x20" + hashlib.sha256(value).digest()).rstrip(b"="), value


SIZES = ("small", "kubo", "256k")
LEAF = 262144  # Kubo's default chunker, size-262144
LINKS = 174  # links per dag-pb node of Kubo's balanced layout
LINK_BYTES = 50  # a link (CID, name, Tsize) plus the UnixFS blocksize entry, about
DIR_EVERY = 20  # files per directory node


def _key(value: bytes) -> bytes:
    """The flatfs file name of a block: base32 of its sha2-256 multihash (what Kubo keys)."""
    return base64.b32encode(b"\x12\x20" + hashlib.sha256(value).digest()).rstrip(b"=")


def _text(rng: random.Random, corpus: bytes, size: int) -> bytes:
    head = rng.randbytes(min(16, size))
    off = rng.randrange(0, len(corpus) - size)
    return head + corpus[off:off + size - len(head)]


def kubo_sizes(rng: random.Random):
    """An endless stream of ``(kind, size)`` blocks as ``ipfs add`` makes them of files of
    log-uniform sizes (512 B to 32 MiB): ``leaf`` (a file of up to 256 KiB, or a 256 KiB
    leaf of a larger one, its last leaf shorter) and ``node`` (the balanced dag-pb tree over
    a large file's leaves, at most 174 links a node; a directory node per 20 files)."""
    files = 0
    lo, hi = math.log(512), math.log(32 << 20)
    while True:
        size = int(math.exp(rng.uniform(lo, hi)))
        leaves = -(-size // LEAF)
        for i in range(leaves):
            yield "leaf", min(LEAF, size - i * LEAF)
        level = leaves
        while level > 1:
            parents = -(-level // LINKS)
            for j in range(parents):
                yield "node", LINK_BYTES * min(LINKS, level - j * LINKS) + 20
            level = parents
        files += 1
        if files % DIR_EVERY == 0:
            yield "node", rng.randrange(512, 4097)


def blocks(n: int, seed: int, sizes: str = "small"):
    """``n`` (name, value) blocks of the ``--sizes`` distribution."""
    if sizes == "small":
        yield from _blocks(n, seed)
        return
    rng = random.Random(seed)
    corpus = datasets.zipf_text(seed + 1000, 4 << 20)
    stream = kubo_sizes(rng) if sizes == "kubo" else itertools.repeat(("leaf", LEAF))
    for kind, size in itertools.islice(stream, n):
        value = _text(rng, corpus, size) if kind == "leaf" else rng.randbytes(size)
        yield _key(value), value


def write_blocks(root: Path, n: int, seed: int, keep: bool = False,
                 sizes: str = "small") -> list[Path]:
    """Write blocks straight into their shard directories (next-to-last/2); their paths
    with ``keep``."""
    rootb = os.fsencode(root)
    made: set[bytes] = set()
    paths = []
    for name, value in blocks(n, seed, sizes):
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


def _write_part(root: Path, n: int, seed: int, sizes: str) -> None:
    write_blocks(root, n, seed, sizes=sizes)


def set_du_cache(root: Path, present: bool) -> None:
    """Write ``diskUsage.cache`` as Kubo leaves it (the exact usage: files and directories),
    or remove it. Without one, the automatic chunk size has no mean block size to go by."""
    du = root / DISK_USAGE_FILE
    if not present:
        du.unlink(missing_ok=True)
    elif not du.is_file():
        du.write_bytes(encode_disk_usage(walk_disk_usage(str(root)), "initial-exact"))


def ensure_store(root: Path, n: int, sizes: str = "small") -> None:
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
        pool.starmap(_write_part, [(root, n // parts + (i < n % parts), 7 + i, sizes)
                                   for i in range(parts)])
    marker.write_text(f"{n}\n")
    print(f"generated {n} blocks in {time.perf_counter() - t:.1f} s", flush=True)


def _cpu() -> float:
    """CPU seconds of this process, its waited-for children and the fork server with its
    reaped children (the parallel scan workers)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    pid = forkserver.server_pid()
    if pid:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


WORKERS: int | None = None  # --workers (None: the default, the CPU count)


def backup(uri: str, out: Path, parent: Path | None = None,
           chunk_size: int | None = None) -> tuple[float, dict]:
    out.unlink(missing_ok=True)
    c, t = _cpu(), time.perf_counter()
    cfg = BackupConfig(chunk_size=chunk_size)
    if WORKERS is not None:
        cfg.workers = WORKERS
    md = BackupManager(cfg).create_backup(uri, out, parent=parent)
    secs, cpu = time.perf_counter() - t, _cpu() - c
    with ArchiveReader(out) as r:
        s = r.summary
        info = {"chunks": r.chunk_count, "stored": s.get("stored_chunks", r.chunk_count),
                "read": s.get("chunks_read_to_compare", 0), "size": out.stat().st_size,
                "chunk_size": (r.manifest.get("settings") or {}).get("chunk_size"),
                "cpu_s": round(cpu, 3), "mode": md.statistics.mode}
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


def _chunk_sizes(text: str) -> list[int | None]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "auto":
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"chunk size must be 'auto' or >= 1, got {part!r}")
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError("a chunk size is given twice")
    return out


def _label(cs: int | None) -> str:
    return "auto" if cs is None else str(cs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2_000_000)
    ap.add_argument("--sizes", choices=SIZES, default="small",
                    help="block sizes: small 1-2 KiB (default), kubo (what ipfs add makes of "
                         "files: mostly 256 KiB leaves), 256k (all 256 KiB)")
    ap.add_argument("--chunk-size", type=_chunk_sizes, default=[None],
                    help="the backups' chunk size, 'auto' (default) or records per chunk; "
                         "several comma-separated are measured in the same rounds")
    ap.add_argument("--du-cache", action=argparse.BooleanOptionalAction, default=None,
                    help="keep a diskUsage.cache in the store, as Kubo does (default: yes for "
                         "kubo and 256k; no for small, as the first runs had it)")
    ap.add_argument("--workers", type=int, default=None,
                    help="backup workers (default: the CPU count); 1 scans centrally")
    ap.add_argument("--dir", default=os.environ.get("DSBACKUP_BENCH_DIR", "/tmp/flatinc-data"))
    ap.add_argument("--archives", default=None, help="where the archives go (default --dir)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-percent", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--max-names", type=int, default=None,
                    help="the URI's max_names (default: twice --files: the in-memory listing)")
    ap.add_argument("--no-full", action="store_true",
                    help="no full-backup rows: the parent is an incremental of an empty "
                         "store's archive (chunk size 770), which reads every block through "
                         "the incremental path; then find against the unchanged incremental")
    ap.add_argument("--listing-only", action="store_true",
                    help="time find against the incremental's native listing (keys sorted, "
                         "file audit) only: no backups")
    args = ap.parse_args(argv)
    global WORKERS
    WORKERS = args.workers
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    name = f"flatfs-{args.files}" if args.sizes == "small" else f"flatfs-{args.sizes}-{args.files}"
    root = work / name
    ensure_store(root, args.files, args.sizes)
    du_cache = args.sizes != "small" if args.du_cache is None else args.du_cache
    set_du_cache(root, du_cache)
    uri = f"flatfs:{root}?max_names={args.max_names or 2 * args.files}"
    work = Path(args.archives) if args.archives else work
    find_count(root)  # warm the dentry and inode caches
    if args.listing_only:
        return listing_only(root, args)
    if args.no_full:
        return no_full(root, uri, work, args)
    sizes = args.chunk_size
    one = len(sizes) == 1
    parents: dict[int | None, Path] = {}
    infos: dict[str, dict] = {}
    for cs in sizes:
        parents[cs] = work / (f"parent-{name}-{'du' if du_cache else 'nodu'}-{_label(cs)}"
                              f"-w{args.workers or 0}.tar.gz")
        if not parents[cs].is_file():
            secs, info = backup(uri, parents[cs], chunk_size=cs)
            print(f"parent (chunk size {_label(cs)} = {info['chunk_size']}): {secs:.1f} s, "
                  f"{info['chunks']} chunks, {info['size'] / 2**20:.0f} MiB", flush=True)
        with ArchiveReader(parents[cs]) as r:
            infos["parent" + ("" if one else f"@{_label(cs)}")] = {
                "chunks": r.chunk_count, "size": parents[cs].stat().st_size,
                "chunk_size": (r.manifest.get("settings") or {}).get("chunk_size")}
    n_new = max(1, int(args.files * args.new_percent / 100))
    load0 = os.getloadavg()
    rows: list[tuple[str, int | None]] = [("find", None)] + [
        (kind + ("" if one else f"@{_label(cs)}"), cs)
        for cs in sizes for kind in ("full", "incremental", "new")]
    times: dict[str, list[float]] = {row: [] for row, _ in rows}
    cpus: dict[str, list[float]] = {row: [] for row, _ in rows if row != "find"}

    def run(row: str, cs: int | None, rnd: int) -> None:
        kind = row.split("@")[0]
        tmp = work / f"{kind}.tar.gz"
        if kind == "find":
            secs, count = find_count(root)
            infos["find"] = {"files": count}
        elif kind == "full":
            secs, infos[row] = backup(uri, tmp, chunk_size=cs)
        elif kind == "incremental":
            secs, infos[row] = backup(uri, tmp, parents[cs])
        else:
            added = write_blocks(root, n_new, seed=1000 + rnd, keep=True, sizes=args.sizes)
            try:
                secs, infos[row] = backup(uri, tmp, parents[cs])
            finally:
                for p in added:
                    p.unlink()
        tmp.unlink(missing_ok=True)
        times[row].append(secs)
        if row in cpus:
            cpus[row].append(infos[row]["cpu_s"])
        print(f"round {rnd} {row:<16} {secs:8.3f} s  load {os.getloadavg()[0]:.1f}",
              flush=True)

    for rnd in range(args.rounds):
        for row, cs in (rows if rnd % 2 == 0 else rows[::-1]):
            run(row, cs, rnd)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    ratios: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    for cs in sizes:
        at = "" if one else f"@{_label(cs)}"
        for num, den in (("incremental", "find"), ("incremental", "full"), ("new", "full")):
            key = f"{num}{at}/{den}{at if den != 'find' else ''}"
            ratios[key] = med[num + at] / med[den + (at if den != "find" else "")]
            per_round[key] = [a / b for a, b in zip(
                times[num + at], times[den + (at if den != "find" else "")])]
        ratios[f"cpu new{at}/full{at}"] = cpu_med["new" + at] / cpu_med["full" + at]
    load1 = os.getloadavg()
    print(f"\n{args.files} files ({infos['find']['files']} by find), sizes {args.sizes}, "
          f"diskUsage.cache {'yes' if du_cache else 'no'}, workers {args.workers or 'default'}, "
          f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds, medians; load average "
          f"{load0[0]:.1f} at the start, {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end")
    for k, v in med.items():
        extra = infos.get(k, {})
        detail = (f"  cpu {cpu_med[k]:7.2f} s  stored {extra['stored']}/{extra['chunks']} "
                  f"chunks, read {extra['read']}, {extra['size'] / 2**20:.1f} MiB, "
                  f"{extra['mode']}"
                  if "stored" in extra else "")
        print(f"  {k:<16} {v:8.3f} s{detail}")
    for k, v in ratios.items():
        rounds = ", ".join(f"{x:.3f}" for x in per_round.get(k, []))
        print(f"  {k:<28} {v:.3f}" + (f"  (per round {rounds})" if rounds else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "files": args.files, "sizes": args.sizes, "du_cache": du_cache,
            "workers": args.workers,
            "chunk_sizes": [_label(cs) for cs in sizes], "cpus": os.cpu_count(),
            "rounds": args.rounds, "new_percent": args.new_percent, "loadavg_start": load0,
            "loadavg_end": load1, "seconds_all": times, "median_s": med, "cpu_s_all": cpus,
            "cpu_median_s": cpu_med, "ratios": ratios, "ratios_per_round": per_round,
            "archives": infos}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
