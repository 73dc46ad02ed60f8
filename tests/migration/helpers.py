"""Helpers for the migration tests: store fillers, content digests, directory hashes."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from pathlib import Path
from typing import Any

from dsbackup.datastores import open_datastore


def store_digest(uri_or_ds: Any) -> str:
    """SHA-256 over the sorted (key, value) records, length-prefixed."""
    ds = open_datastore(uri_or_ds, readonly=True) if isinstance(uri_or_ds, str) else uri_or_ds
    try:
        h = hashlib.sha256()
        n = 0
        for keys, values in ds.scan_batches(b"", None, max_records=4096):
            for k, v in zip(keys, values):
                h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(8, "big") + v)
                n += 1
        return f"{n}:{h.hexdigest()}"
    finally:
        if isinstance(uri_or_ds, str):
            ds.close()


def records(uri: str) -> dict[bytes, bytes]:
    ds = open_datastore(uri, readonly=True)
    try:
        out: dict[bytes, bytes] = {}
        for keys, values in ds.scan_batches(b"", None):
            out.update(zip(keys, values))
        return out
    finally:
        ds.close()


def dir_hash(path: Path) -> str:
    """Hash of every file's name, bytes and mtime under ``path``."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            st = p.stat()
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(p.read_bytes())
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()


def fill(uri: str, items: dict[bytes, bytes]) -> None:
    ds = open_datastore(uri)
    try:
        keys = sorted(items)
        ds.put_many(keys, [items[k] for k in keys])
        ds.sync("/")
    finally:
        ds.close()


def kv_items(n: int, seed: int = 1, prefixes: tuple[str, ...] = ("/a", "/b", "/m")
             ) -> dict[bytes, bytes]:
    rnd = random.Random(seed)
    out = {}
    for i in range(n):
        p = prefixes[i % len(prefixes)]
        out[f"{p}/{i:06d}".encode()] = rnd.randbytes(rnd.randint(0, 200))
    return out


def b32(data: bytes) -> bytes:
    return base64.b32encode(data).rstrip(b"=")


def block_items(n: int, seed: int = 7) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """Flatfs block records keyed as Kubo < 0.12 wrote them (half CIDv1, half CIDv0), and
    the keys Kubo's 11-to-12 migration turns them into, computed with hashlib + base64."""
    rnd = random.Random(seed)
    before: dict[bytes, bytes] = {}
    after: dict[bytes, bytes] = {}
    for i in range(n):
        data = rnd.randbytes(rnd.randint(1, 600))
        mh = b"\x12\x20" + hashlib.sha256(data).digest()
        if i % 2:
            codec = (b"\x55", b"\x70", b"\x71")[i % 3]
            key = b"/" + b32(b"\x01" + codec + mh)        # CIDv1: base32 of the CID bytes
        else:
            key = b"/" + b32(mh)                           # CIDv0: base32 of the multihash
        before[key] = data
        after[b"/" + b32(mh)] = data
    return before, after
