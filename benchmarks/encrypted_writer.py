"""The encrypted archive writer alone: CPU of writing precompressed chunks, plain and encrypted.

Usage: python benchmarks/encrypted_writer.py [--rounds 6] [--reps 3] [--before SRC] [--json FILE]

The workers' compression (the bulk of a backup, and of its run-to-run swing on a shared VM) is
left out: the chunks are compressed once, then each row is a child process that writes them to
an archive ``--reps`` times with ``ArchiveWriter`` (raw key for the encrypted rows), timing each
write's process CPU (all its threads: the sealing thread too) and wall. Rows run interleaved,
their order rotated every round. ``--before SRC``: also the encrypted row with another
checkout's ``src`` (its extensions built). Data: 1,200 records of 150 kB random + 100 kB zeros
(≈ 300 MB raw, 172 MiB of chunks of ≈ 560 kB, like the blocks data set's).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, pickle, sys, time, tempfile
from pathlib import Path
from dsbackup.archive import crypto
from dsbackup.archive.writer import ArchiveWriter
cs = pickle.loads(Path(sys.argv[1]).read_bytes())
enc, reps = sys.argv[2] == "enc", int(sys.argv[3])
material = crypto.KeyMaterial(key=b"k" * 32) if enc else None
d = Path(tempfile.mkdtemp(dir=sys.argv[4]))
out = []
for _ in range(reps):
    p = d / "a.tar.gz"
    t0, c0 = time.perf_counter(), time.process_time()
    with ArchiveWriter(p, manifest={"t": 1}, key=material) as w:
        for c in cs:
            w.add_chunk(c, c.catalog_body, c.catalog_xxh3)
        w.finish()
    out.append((time.perf_counter() - t0, time.process_time() - c0))
    p.unlink()
d.rmdir()
print(repr(out))
"""


def _chunks(path: Path) -> int:
    """Compress the data once into `path` (pickled ReadyChunks); their total bytes."""
    sys.path.insert(0, str(ROOT / "src"))
    from dsbackup._ext.framing import Chunker
    from dsbackup.pipeline.chunks import compress_chunk

    rnd = random.Random(1)
    ch = Chunker(64, 1 << 20)
    keys = [b"/blocks/%08d" % i for i in range(1200)]
    vals = [rnd.randbytes(150_000) + bytes(100_000) for _ in range(1200)]
    out = list(ch.add(keys, vals))
    last = ch.finish()
    cs = [compress_chunk(c, 1, False) for c in out + ([last] if last else [])]
    path.write_bytes(pickle.dumps(cs))
    return sum(len(c.body.data) for c in cs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dsbackup-encwriter-"))
    try:
        data = work / "chunks.pickle"
        size = _chunks(data)
        rows = {"plain": ("plain", ROOT / "src"), "encrypted": ("enc", ROOT / "src")}
        if args.before is not None:
            rows["encrypted (before)"] = ("enc", args.before.resolve())
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        names = list(rows)
        for r in range(args.rounds):
            for label in names[r % len(names):] + names[:r % len(names)]:
                mode, src = rows[label]
                res = subprocess.run(
                    [sys.executable, "-c", CHILD, str(data), mode, str(args.reps), str(work)],
                    env=dict(env, PYTHONPATH=str(src)), capture_output=True, text=True,
                    check=True)
                got = eval(res.stdout.strip().splitlines()[-1])  # noqa: S307 - our child
                samples[label].extend(got)
                print(f"  round {r + 1}: {label:20} CPU "
                      + " ".join(f"{c:.3f}" for _, c in got), file=sys.stderr, flush=True)
        out = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "chunk_bytes": size, "rounds": args.rounds, "reps": args.reps,
               "loadavg": os.getloadavg(), "rows": {}}
        plain = statistics.median(c for _, c in samples["plain"])
        for label, s in samples.items():
            cpu = statistics.median(c for _, c in s)
            out["rows"][label] = {"cpu": cpu, "wall": statistics.median(w for w, _ in s),
                                  "cpu_all": [c for _, c in s], "wall_all": [w for w, _ in s]}
            print(f"{label:20} CPU median {cpu:.4f} s, extra over plain {cpu - plain:+.4f} s "
                  f"({(cpu - plain) / (size / 2**20) * 1e3:.3f} ms/MiB)")
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
