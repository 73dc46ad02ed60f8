"""Deterministic synthetic datastores for the demo, tests and benchmarks.

- "blocks": 256 KiB values, half random bytes and half Zipf-distributed word text, under
  keys `/blocks/CIQ...` (the base32 multihash of the value's SHA-256, as Kubo's flatfs names
  blocks), optionally with small `/pins/...` records beside them.
- "small": records with ~50-byte keys and 100-300-byte semi-compressible values.

Generation is seeded: the same arguments give the same records.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Iterator

BLOCK_SIZE = 256 * 1024
_CORPUS_BYTES = 8 << 20


def _words(rng: random.Random, n: int = 4000) -> list[bytes]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    out = set()
    while len(out) < n:
        k = max(1, min(12, int(rng.expovariate(1 / 5)) + 1))
        out.add("".join(rng.choices(letters, weights, k=k)).encode())
    return sorted(out)


def zipf_text(seed: int, size: int = _CORPUS_BYTES) -> bytes:
    """`size` bytes of word text whose word frequencies follow Zipf's law."""
    rng = random.Random(seed)
    vocab = _words(rng)
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    parts: list[bytes] = []
    total = 0
    while total < size:
        words = rng.choices(vocab, weights, k=4096)
        line = b" ".join(words) + b".\n"
        parts.append(line)
        total += len(line)
    return b"".join(parts)[:size]


def block_key(value: bytes) -> bytes:
    """`/blocks/<base32 multihash>`: sha2-256 multihash (0x12 0x20 + digest), RFC 4648 base32
    without padding — the `CIQ...` names Kubo's flatfs uses for CIDv0 blocks."""
    mh = b"\x12\x20" + hashlib.sha256(value).digest()
    return b"/blocks/" + base64.b32encode(mh).rstrip(b"=")


def iter_blocks(count: int, seed: int = 1, block_size: int = BLOCK_SIZE,
                ) -> Iterator[tuple[bytes, bytes]]:
    """`count` blocks (key, value), in generation order (not key order)."""
    rng = random.Random(seed)
    corpus = zipf_text(seed + 1000)
    half = block_size // 2
    for _ in range(count):
        rand = rng.randbytes(half)
        off = rng.randrange(0, len(corpus) - (block_size - half))
        value = rand + corpus[off : off + block_size - half]
        yield block_key(value), value


def iter_small(count: int, seed: int = 2) -> Iterator[tuple[bytes, bytes]]:
    """`count` small records in key order: ~50-byte keys, 100-300-byte values that compress
    about 2:1 (text with random identifiers)."""
    rng = random.Random(seed)
    corpus = zipf_text(seed + 2000, 1 << 20)
    for i in range(count):
        key = b"/records/%012d/%s" % (i, rng.randbytes(12).hex().encode())  # 46 bytes
        n = rng.randrange(100, 301)
        r = n // 3
        off = rng.randrange(0, len(corpus) - n)
        value = rng.randbytes(r).hex().encode()[:r] + corpus[off : off + n - r]
        yield key, value


def iter_pins(count: int, seed: int = 3) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    for i in range(count):
        yield (b"/pins/%08d" % i,
               b'{"cid":"bafy%s","type":"recursive"}' % rng.randbytes(24).hex().encode())


def write_lmdb(path: str, records: Iterator[tuple[bytes, bytes]], *, sort: bool = True,
               batch: int = 2048) -> tuple[int, int]:
    """Write records into a new LMDB datastore at `path`; returns (records, bytes)."""
    from dsbackup.datastores import open_datastore

    n = nbytes = 0
    ds = open_datastore(f"lmdb:{path}")
    try:
        items = sorted(records) if sort else records
        keys: list[bytes] = []
        values: list[bytes] = []
        for k, v in items:
            keys.append(k)
            values.append(v)
            n += 1
            nbytes += len(k) + len(v)
            if len(keys) >= batch:
                ds.put_many(keys, values)
                keys, values = [], []
        if keys:
            ds.put_many(keys, values)
        ds.sync("/")
    finally:
        ds.close()
    return n, nbytes
