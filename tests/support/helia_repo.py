"""Helia repositories written as Helia's js-stores write them (for tests).

- ``blocks/``: blockstore-fs with its default ``NextToLast`` strategy: the file name is
  ``base32upper`` multibase of the block's multihash (``B`` + RFC 4648 base32, no padding)
  plus ``.data``, in the directory named by the name's last two characters; no other files.
- ``datastore/``: datastore-fs (key ``/a/b`` -> ``a/b.data``, raw value) or a LevelDB
  (datastore-level: the key's bytes, raw value).

Blocks are CIDv0 content (dag-pb, sha2-256) and CIDv1 content (raw, sha2-256 or
blake2b-256); the blockstore keys by multihash only, so ``kubo_key`` is what Kubo's flatfs
would store it under.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
from pathlib import Path


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def multihash(data: bytes, blake: bool = False) -> bytes:
    if blake:
        return b"\xa0\xe4\x02\x20" + hashlib.blake2b(data, digest_size=32).digest()
    return b"\x12\x20" + hashlib.sha256(data).digest()


def dag_pb(data: bytes) -> bytes:
    """A small dag-pb node (PBNode.Data = UnixFS file bytes), as a CIDv0 block holds."""
    unixfs = b"\x08\x02\x12" + _varint(len(data)) + data + b"\x18" + _varint(len(data))
    return b"\x0a" + _varint(len(unixfs)) + unixfs


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def make_blocks(n: int, seed: int = 1) -> dict[str, bytes]:
    """Kubo block key name (base32 multihash) -> block bytes; half CIDv0, half CIDv1."""
    rnd = random.Random(seed)
    out: dict[str, bytes] = {}
    for i in range(n):
        payload = rnd.randbytes(rnd.choice([0, 1, 40, 300, 5000])) + i.to_bytes(4, "big")
        if i % 2 == 0:
            block = dag_pb(payload)
            mh = multihash(block)
        else:
            block = payload
            mh = multihash(block, blake=i % 4 == 1)
        out[b32(mh)] = block
    return out


def helia_block_path(root: Path, name: str) -> Path:
    file = "B" + name
    return root / file[-2:] / f"{file}.data"


def write_blockstore(root: Path, blocks: dict[str, bytes]) -> None:
    for name, value in blocks.items():
        p = helia_block_path(root, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(value)


def make_records(n: int, seed: int = 2) -> dict[bytes, bytes]:
    rnd = random.Random(seed)
    out = {b"/local/filesroot": b"\x01\x55" + rnd.randbytes(34), b"/version": b"1",
           b"/empty": b""}
    for i in range(n):
        out[f"/pins/{i:04d}".encode()] = rnd.randbytes(rnd.randint(0, 200))
        out[f"/peers/addrs/P{i:03d}".encode()] = rnd.randbytes(20)
    return out


def write_datastore_fs(root: Path, records: dict[bytes, bytes]) -> None:
    for key, value in records.items():
        p = Path(os.fsdecode(bytes(root) if isinstance(root, bytes) else os.fsencode(root)
                             + key + b".data"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(value)


def write_datastore_level(root: Path, records: dict[bytes, bytes]) -> None:
    import plyvel

    db = plyvel.DB(str(root), create_if_missing=True)
    with db.write_batch() as wb:
        for k, v in records.items():
            wb.put(k, v)
    db.close()


def make_helia_repo(repo: Path, *, blocks: int = 320, records: int = 40,
                    level: bool = False) -> tuple[dict[str, bytes], dict[bytes, bytes]]:
    """Write a Helia repo; returns (blocks by Kubo name, datastore records)."""
    bl = make_blocks(blocks)
    rec = make_records(records)
    write_blockstore(repo / "blocks", bl)
    (repo / "datastore").mkdir(parents=True, exist_ok=True)
    if level:
        write_datastore_level(repo / "datastore", rec)
    else:
        write_datastore_fs(repo / "datastore", rec)
    return bl, rec
