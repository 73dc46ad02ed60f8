"""Content-addressed keys: a block's key names the multihash of its value.

Kubo stores blocks under `/blocks/<NAME>` (and a bare flatfs blockstore under `/<NAME>`), where
NAME is the RFC 4648 base32 (upper case, no padding) of the block's multihash. This module
recognises sha2-256 multihashes (`0x12 0x20` + 32-byte digest, the `CIQ...` names) and checks a
value against its key. Incremental backups rely on this property to skip unchanged blocks
without reading them; `verify --deep --check-blocks` re-hashes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from dsbackup._ext.framing import FramingError, decode_records
from dsbackup.errors import IntegrityError

SHA2_256 = b"\x12\x20"
_NAME_LEN = 55  # base32 of a 34-byte multihash, unpadded


def key_multihash(key: bytes) -> bytes | None:
    """The sha2-256 multihash a block key names, or None for any other key."""
    name = key.rsplit(b"/", 1)[-1]
    if len(name) != _NAME_LEN or not name.startswith(b"CIQ"):
        return None
    try:
        mh = base64.b32decode(name + b"=" * (-len(name) % 8))
    except (binascii.Error, ValueError):
        return None
    return mh if len(mh) == 34 and mh.startswith(SHA2_256) else None


def block_matches(key: bytes, value: bytes) -> bool | None:
    """True/False when `key` names a sha2-256 multihash (of `value` or not); None otherwise."""
    mh = key_multihash(key)
    if mh is None:
        return None
    return hashlib.sha256(value).digest() == mh[2:]


def check_payload_blocks(payload: memoryview | bytes, where: str, chunk: int) -> int:
    """Re-hash every block of a (checked) chunk payload; returns how many were checked."""
    try:
        keys, values = decode_records(payload)
    except FramingError as exc:
        raise IntegrityError(f"{where}: {exc}", chunk=chunk) from None
    checked = 0
    for k, v in zip(keys, values):
        ok = block_matches(k, v)
        if ok is None:
            continue
        if not ok:
            raise IntegrityError(f"{where}: block {k.decode('ascii', 'replace')} does not hash "
                                 "to its key (sha2-256)", chunk=chunk)
        checked += 1
    return checked
