"""Incremental backups against full backups (and restic / borg re-runs) in one run.

Usage: python benchmarks/bench_incremental.py [--json FILE] [--scale S] [--reps N]

Scenarios (sizes at scale 1; DSBACKUP_BENCH_SCALE or --scale shrinks them):
- blocks-lmdb, blocks-flatfs: 1 GiB of 256 KiB blocks keyed by their multihash, unchanged
  since the parent. Target: incremental <= 0.1x the full backup, and faster than
  `restic backup` / `borg create` re-runs of the same flatfs directory (run only when those
  tools are installed; the line says so when they are not).
- small-lmdb: 1 M small records (~50-byte keys, 100-300-byte values), 1% of the records
  changed (a third updated, a third deleted, a third inserted) after the parent, in two
  patterns: "clustered" (the changes fall in 20 contiguous key ranges, as appends and recent
  updates do) and "scattered" (uniformly random keys). Target: incremental <= 0.3x the full
  backup. With ~1 MiB chunks (≈4000 records) scattered 1% changes touch nearly every chunk,
  so no chunk-level incremental can skip work there; the line reports the ratio anyway.

Times are wall-clock seconds of the in-process API call (`BackupManager.create_backup`, with
its default integrity check), best of --reps runs, page cache warm; sources are LMDB URIs /
flatfs URIs as the CLI passes them. Full backups use the default workers (CPU count).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from dsbackup import datasets  # noqa: E402
from dsbackup.archive.reader import ArchiveReader  # noqa: E402
from dsbackup.datastores import open_datastore  # noqa: E402
from dsbackup.engine.backup import BackupManager  # noqa: E402
from dsbackup.engine.config import BackupConfig  # noqa: E402


def best(fn, reps: int) -> float:
    t = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def _backup(uri: str, out: Path, parent: Path | None = None) -> dict:
    if out.exists():
        out.unlink()
    meta = BackupManager(BackupConfig()).create_backup(uri, out, parent=parent)
    with ArchiveReader(out) as r:
        s = r.summary
    return {"size": meta.compressed_size, "chunks": meta.chunks,
            "stored": s.get("stored_chunks", meta.chunks),
            "read": s.get("chunks_read_to_compare", 0)}


def compare(name: str, uri: str, work: Path, parent: Path, reps: int) -> dict:
    full_t = best(lambda: _backup(uri, work / "full.tar.gz"), max(2, reps - 1))
    inc_t = best(lambda: _backup(uri, work / "inc.tar.gz", parent), reps)
    info = _backup(uri, work / "inc.tar.gz", parent)
    row = {"scenario": name, "full_s": round(full_t, 4), "incremental_s": round(inc_t, 4),
           "ratio": round(inc_t / full_t, 4),
           "full_size": (work / "full.tar.gz").stat().st_size,
           "incremental_size": info["size"], "chunks": info["chunks"],
           "stored_chunks": info["stored"], "chunks_read_to_compare": info["read"]}
    print(f"{name:<24} full {full_t:7.3f} s  incremental {inc_t:7.3f} s  ratio "
          f"{row['ratio']:.3f}  stored {info['stored']}/{info['chunks']} chunks, "
          f"{info['size'] / 2**20:.2f} MiB vs {row['full_size'] / 2**20:.1f} MiB", flush=True)
    return row


def blocks(kind: str, root: Path, n: int, reps: int, results: list) -> Path:
    path = root / f"blocks-{kind}"
    recs = datasets.iter_blocks(n)
    if kind == "lmdb":
        datasets.write_lmdb(str(path), recs)
    else:
        with open_datastore(f"flatfs:{path}") as ds:
            keys: list[bytes] = []
            values: list[bytes] = []
            for k, v in recs:
                keys.append(k[len(b"/blocks"):])
                values.append(v)
                if len(keys) >= 256:
                    ds.put_many(keys, values)
                    keys, values = [], []
            if keys:
                ds.put_many(keys, values)
    uri = f"{kind}:{path}"
    work = root / f"work-{kind}"
    work.mkdir()
    _backup(uri, work / "parent.tar.gz")
    results.append(compare(f"blocks-{kind} unchanged", uri, work, work / "parent.tar.gz", reps))
    return path


def _changes(n_records: int, rng: random.Random, pattern: str, keys_of) -> tuple[list, list,
                                                                              list]:
    n = n_records // 100
    if pattern == "scattered":
        picks = rng.sample(range(n_records), 2 * (n // 3))
    else:  # 20 contiguous ranges
        per = max(1, 2 * (n // 3) // 20)
        span = n_records // 20
        starts = [i * span + rng.randrange(max(1, span - per)) for i in range(20)]
        picks = [s + j for s in starts for j in range(per)]
    upd = picks[: len(picks) // 2]
    dele = picks[len(picks) // 2 :]
    # inserts: beside the changed records when clustered, anywhere when scattered
    ins = ([rng.choice(picks) for _ in range(n - len(picks))] if pattern == "clustered"
           else [rng.randrange(n_records) for _ in range(n - len(picks))])
    return ([keys_of(i) for i in upd], [keys_of(i) for i in dele],
            sorted({keys_of(i) + b"/new" for i in ins}))


def small(root: Path, n: int, reps: int, results: list) -> None:
    for pattern in ("clustered", "scattered"):
        path = root / f"small-{pattern}"
        datasets.write_lmdb(str(path), datasets.iter_small(n), sort=False, batch=20000)
        uri = f"lmdb:{path}"
        work = root / f"work-small-{pattern}"
        work.mkdir()
        _backup(uri, work / "parent.tar.gz")
        with open_datastore(uri, readonly=True) as ds:
            allkeys = [k for keys, _ in ds.scan_key_sizes() for k in keys]
        rng = random.Random(42)
        upd, dele, ins = _changes(len(allkeys), rng, pattern, allkeys.__getitem__)
        with open_datastore(uri) as ds:
            ds.put_many(sorted(upd + ins), [rng.randbytes(150) for _ in upd + ins])
            for k in dele:
                ds.delete(k)
        results.append(compare(f"small-lmdb 1% {pattern}", uri, work, work / "parent.tar.gz",
                               reps))
        shutil.rmtree(path)
        shutil.rmtree(work)


def _tool_rerun(tool: str, data: Path, root: Path, reps: int) -> float | None:
    exe = shutil.which(tool)
    if exe is None:
        return None
    env = dict(os.environ, RESTIC_PASSWORD="bench", BORG_PASSPHRASE="bench",
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes")
    repo = root / f"repo-{tool}"
    if tool == "restic":
        init = [exe, "init", "--repo", str(repo)]
        run = [exe, "backup", "--repo", str(repo), "--quiet", str(data)]
    else:
        init = [exe, "init", "--encryption", "none", str(repo)]
        run = None
    subprocess.run(init, env=env, check=True, capture_output=True)
    counter = iter(range(10**6))

    def once() -> None:
        cmd = run or [exe, "create", f"{repo}::a{next(counter)}", str(data)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)

    once()  # the first, full run
    return best(once, reps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--scale", type=float,
                    default=float(os.environ.get("DSBACKUP_BENCH_SCALE", "1")))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=("blocks", "small"), default=None)
    args = ap.parse_args()
    nblocks = max(16, int(4096 * args.scale))
    nsmall = max(2000, int(1_000_000 * args.scale))
    results: list = []
    root = Path(tempfile.mkdtemp(prefix="dsbackup-bench-incr-"))
    try:
        print(f"{nblocks} blocks ({nblocks * 256 // 1024} MiB), {nsmall} small records, "
              f"{os.cpu_count()} CPUs", flush=True)
        if args.only != "small":
            _blocks_and_tools(root, nblocks, args.reps, results)
        if args.only != "blocks":
            small(root, nsmall, args.reps, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"scale": args.scale, "cpus": os.cpu_count(),
                                               "results": results}, indent=1))


def _blocks_and_tools(root: Path, nblocks: int, reps: int, results: list) -> None:
    blocks("lmdb", root, nblocks, reps, results)
    shutil.rmtree(root / "blocks-lmdb")
    flat = blocks("flatfs", root, nblocks, reps, results)
    inc = next(r for r in results if r["scenario"] == "blocks-flatfs unchanged")
    for tool in ("restic", "borg"):
        t = _tool_rerun(tool, flat, root, reps)
        if t is None:
            print(f"{tool:<24} not installed here: no comparison in this run", flush=True)
            results.append({"scenario": f"{tool} re-run", "installed": False})
        else:
            print(f"{tool + ' re-run':<24} {t:7.3f} s; dsbackup incremental is "
                  f"{t / inc['incremental_s']:.1f}x faster", flush=True)
            results.append({"scenario": f"{tool} re-run", "installed": True,
                            "seconds": round(t, 4),
                            "dsbackup_incremental_s": inc["incremental_s"]})
    shutil.rmtree(flat)


def test_incremental_smoke(tmp_path):
    """`make bench-smoke`: the scenarios at a tiny scale (correctness, not timing)."""
    results: list = []
    blocks("lmdb", tmp_path, 16, 1, results)
    small(tmp_path, 2000, 1, results)
    assert results[0]["stored_chunks"] == 0
    assert all(r["ratio"] > 0 for r in results)


if __name__ == "__main__":
    main()
