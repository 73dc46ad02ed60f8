"""Full and incremental backups of a ``kubo:`` repo (256 KiB flatfs blocks plus a LevelDB of
small records), two source trees (A/B), interleaved, each backup in a fresh process.

Usage: python benchmarks/kubo_autosize_ab.py --old SRC --new SRC [--blocks N] [--records R]
       [--workers W] [--new-percent P] [--rounds R] [--dir DIR] [--json FILE]

Made for the automatic chunk size of a mounted store whose LevelDB cannot count
(docs/PERFORMANCE.md, "Automatic chunk size of a Kubo repo"). The repo: the Kubo fixture's
config files, ``flatfs_incremental.py``'s 256 KiB blocks (with ``diskUsage.cache``) and R small
records (60-300 B: provider-, pin- and IPNS-like keys) in the LevelDB. Each tree first makes
its own parent (a full backup, automatic chunk size). Then every round, tree order reversed
every other round: ``full`` (a full backup with each tree), ``same`` (an incremental of the
unchanged repo) and ``new`` (P% new blocks and P% new small records, the same for both trees,
removed after it). Rows as ``flatfs_autosize_ab.py``'s: wall, CPU (children and the fork
server's workers included), chunk size, chunks, stored chunks, archive size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from flatfs_autosize_ab import run  # noqa: E402
from flatfs_incremental import ensure_store, write_blocks  # noqa: E402

from dsbackup.datastores import open_datastore  # noqa: E402

FIXTURE = HERE.parent / "tests" / "fixtures" / "kubo-v16-repo"
PREFIXES = (b"/providers/", b"/pins/", b"/ipns/", b"/dht/")


def small_records(n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(seed)
    keys = [PREFIXES[i % 4] + rng.randbytes(24).hex().encode() for i in range(n)]
    return keys, [rng.randbytes(rng.randint(60, 300)) for _ in range(n)]


def ensure_repo(root: Path, blocks: int, records: int) -> None:
    marker = root.parent / f".{root.name}.complete"
    if marker.is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name in ("config", "datastore_spec", "version"):
        shutil.copy(FIXTURE / name, root / name)
    ensure_store(root / "blocks", blocks, "256k")
    with open_datastore(f"kubo:{root}") as ds:
        keys, values = small_records(records, 1)
        for i in range(0, records, 10_000):
            ds.put_many(keys[i:i + 10_000], values[i:i + 10_000])
    marker.write_text("done\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--blocks", type=int, default=1200)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--new-percent", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/kuboauto-data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"kubo-{args.blocks}-{args.records}"
    ensure_repo(root, args.blocks, args.records)
    uri = f"kubo:{root}"
    trees = {"old": args.old, "new": args.new}
    parents = {}
    for t, src in trees.items():
        parents[t] = work / f"kubo-parent-{t}.tar.gz"
        info = run(src, uri, parents[t], "auto", args.workers, keep=True)
        print(f"parent {t}: chunk size {info['chunk_size']}, {info['chunks']} chunks, "
              f"{info['size'] / 2**20:.1f} MiB", flush=True)
    load0 = os.getloadavg()
    rows = ["full", "same", "new"]
    res: dict[str, list[dict]] = {f"{r}/{t}": [] for r in rows for t in trees}
    for rnd in range(args.rounds):
        order = list(trees) if rnd % 2 == 0 else list(reversed(trees))
        for row in rows:
            added: list[Path] = []
            keys: list[bytes] = []
            if row == "new":
                added = write_blocks(root / "blocks", max(1, int(args.blocks * args.new_percent
                                                                 / 100)),
                                     seed=1000 + rnd, keep=True, sizes="256k")
                keys, values = small_records(max(1, int(args.records * args.new_percent / 100)),
                                             2000 + rnd)
                with open_datastore(uri) as ds:
                    ds.put_many(keys, values)
            try:
                for t in order:
                    r = run(trees[t], uri, work / f"kubo-{t}.tar.gz", "auto", args.workers,
                            parents[t] if row != "full" else None)
                    res[f"{row}/{t}"].append(r)
                    print(f"round {rnd + 1} {row} {t}: {r['wall']:.2f} s, {r['cpu']:.2f} s CPU, "
                          f"chunk size {r['chunk_size']}, {r['stored']} of {r['chunks']} "
                          f"chunks stored, {r['size'] / 2**20:.1f} MiB, load "
                          f"{os.getloadavg()[0]:.1f}", flush=True)
            finally:
                for p in added:
                    p.unlink()
                if keys:
                    with open_datastore(uri) as ds:
                        for k in keys:
                            ds.delete(k)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall", "cpu", "size", "chunks")}
           for k, v in res.items()}
    for row in rows:
        o, n = med[f"{row}/old"], med[f"{row}/new"]
        print(f"{row}: old {o['cpu']:.2f} s CPU {o['wall']:.2f} s wall {o['chunks']:.0f} chunks; "
              f"new {n['cpu']:.2f} s CPU {n['wall']:.2f} s wall {n['chunks']:.0f} chunks; "
              f"new/old CPU {n['cpu'] / o['cpu']:.3f} wall {n['wall'] / o['wall']:.3f}")
    for t in trees:
        f = med[f"full/{t}"]
        print(f"{t}: new/full CPU {med[f'new/{t}']['cpu'] / f['cpu']:.3f}, same/full CPU "
              f"{med[f'same/{t}']['cpu'] / f['cpu']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "load_start": load0, "load_end": os.getloadavg(),
            "runs": res, "medians": med}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
