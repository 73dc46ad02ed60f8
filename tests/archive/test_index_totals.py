"""Index.totals: the summary check's sums read through strided memoryviews of a flat chunk
table (no numpy import) agree with the same table decoded as numpy arrays."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from dsbackup.archive.index import FLAG_PARENT, ChunkEntry, Index, IndexBuilder


def _index(n: int, seed: int) -> Index:
    rng = random.Random(seed)
    b = IndexBuilder()
    off = 512
    for i in range(n):
        ref = rng.random() < 0.3
        b.add_chunk(ChunkEntry(i, 0 if ref else off, 0 if ref else 100, rng.randrange(1, 1 << 20),
                               rng.randrange(0, 1 << 40), rng.getrandbits(64),
                               0 if ref else rng.getrandbits(64), rng.getrandbits(64),
                               b"k%08d" % (2 * i), b"k%08d" % (2 * i + 1),
                               FLAG_PARENT if ref else 0))
        off += 0 if ref else 100
    return Index(b.encode(10, 0))


def test_totals_agree_with_the_arrays() -> None:
    for n, seed in ((0, 1), (1, 2), (7, 3), (4096, 4)):
        ix = _index(n, seed)
        got = list(ix.totals())
        digests = b"".join(d for d, _, _, _ in got)
        records = sum(r for _, r, _, _ in got)
        refs = sum(x for _, _, x, _ in got)
        payload = sum(b for _, _, _, b in got)
        assert payload == sum(e.payload_len for e in ix.entries())
        assert ix.reference_seqs() == [e.seq for e in ix.entries() if e.in_parent]
        tables = list(ix.tables())
        assert digests == b"".join(t["payload_xxh3"].astype("<u8").tobytes() for t in tables)
        assert records == sum(int(t["records"].sum(dtype=np.uint64)) for t in tables)
        assert refs == sum(int(np.count_nonzero(t["flags"] & FLAG_PARENT)) for t in tables)
        assert refs == sum(1 for e in ix.entries() if e.in_parent)
        assert records == sum(e.records for e in ix.entries())


def test_totals_do_not_import_numpy() -> None:
    code = ("import sys\n"
            "from dsbackup.archive.index import ChunkEntry, Index, IndexBuilder\n"
            "b = IndexBuilder()\n"
            "b.add_chunk(ChunkEntry(0, 512, 100, 10, 3, 7, 8, 9, b'a', b'b'))\n"
            "ix = Index(b.encode(10, 0))\n"
            "assert list(ix.totals())[0][1] == 3\n"
            "print('numpy' in sys.modules)\n")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    assert out == "False"
