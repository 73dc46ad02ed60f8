"""Deterministic data sets for the native benchmarks (bench_native.py, native_ratios.py).

``DSBACKUP_BENCH_SCALE`` (default 1.0) scales every data set; e.g. 0.01 for a smoke run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

BLOCK = 256 << 10


def scale() -> float:
    return float(os.environ.get("DSBACKUP_BENCH_SCALE", "1"))


def scaled(n: int, minimum: int = 1) -> int:
    return max(minimum, int(n * scale()))


def zipf_text(n: int, seed: int = 1) -> bytes:
    """``n`` bytes of words drawn from a Zipf-like distribution over 5000 made-up words."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10)))
             for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(5000)]
    base = b" ".join(rnd.choices(words, weights=weights, k=min(n, 1 << 20) // 5 + 1))
    out = bytearray()
    while len(out) < n:
        out += base
    return bytes(out[:n])


def mixed_blocks(count: int, seed: int = 2, block: int = BLOCK) -> list[bytes]:
    """Blocks of ``block`` bytes: the first half random bytes, the second half Zipf text."""
    rnd = random.Random(seed)
    text = zipf_text(1 << 20, seed)
    half = block // 2
    out = []
    for _ in range(count):
        off = rnd.randrange(0, len(text) - half)
        out.append(rnd.randbytes(half) + text[off:off + half])
    return out


def block_keys(count: int) -> list[bytes]:
    return [b"/blocks/CIQ%040d" % i for i in range(count)]


def small_records(n: int, seed: int = 3) -> tuple[list[bytes], list[bytes]]:
    """``n`` sorted 50-byte keys with 100..300-byte semi-compressible values.

    Each value is half random bytes (hashes, CIDs) and half Zipf text, so it compresses to
    about 0.75 of its size at ISA-L level 1.
    """
    rnd = random.Random(seed)
    text = zipf_text(1 << 20, seed)
    # re-create the keys in sorted order, as a datastore iterator would allocate them
    # (objects allocated in random order make every access a cache and TLB miss)
    keys = [bytes(bytearray(k)) for k in
            sorted({b"/data/" + rnd.randbytes(22).hex().encode() for _ in range(n)})]
    values = []
    for _ in keys:
        ln = rnd.randint(100, 300)
        half = ln // 2
        off = rnd.randrange(0, len(text) - ln)
        values.append(rnd.randbytes(half) + text[off:off + ln - half])
    return keys, values


def make_lmdb(path: Path, n: int, seed: int = 4) -> Path:
    """An LMDB environment with ``n`` small records (written once, reused when present)."""
    import lmdb

    marker = path / f".complete-{n}"
    if marker.exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=max(1 << 26, n * 600), writemap=True, sync=False)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(), delete=False)
            for start in range(0, n, 200_000):
                keys, values = small_records(min(200_000, n - start), seed + start)
                prefix = b"/d%03d" % (start // 200_000)  # 50-byte keys, sorted across batches
                txn.cursor().putmulti(((prefix + k[5:], v) for k, v in zip(keys, values)),
                                      append=True)
        env.sync(True)
    finally:
        env.close()
    marker.touch()
    return path
