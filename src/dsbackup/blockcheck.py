"""Content-addressed keys: a block's key names the multihash of its value.

Kubo stores blocks under `/blocks/<NAME>` (and a bare flatfs blockstore under `/<NAME>`), where
NAME is the RFC 4648 base32 (upper case, no padding) of the block's multihash. This module
recognises sha2-256 multihashes (`0x12 0x20` + 32-byte digest, the `CIQ...` names) and checks a
value against its key. Incremental backups rely on this property to skip unchanged blocks
without reading them; `verify --deep --check-blocks` re-hashes them and counts, with the
reason, the block keys it cannot check (:class:`BlockTally`): keys under `/blocks` (and
single-namespace keys of a bare blockstore that name a CID or multihash) that are CIDv1 keys
(Kubo < 0.12), use another hash function, or are no base32 multihash at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

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


REASON_CIDV1 = "CIDv1 keys: not multihash keys (Kubo < 0.12 layout)"
REASON_OTHER_HASH = "multihash keys of another hash function than sha2-256"
REASON_NOT_MH = "keys under /blocks that are not base32 of a multihash"


def unchecked_reason(key: bytes) -> str | None:
    """Why a block key (under ``/blocks``, or a bare blockstore's ``/NAME`` naming a CID or
    multihash) cannot be re-hashed; None for a checkable key or a key that is no block."""
    parent, _, name = bytes(key).rpartition(b"/")
    in_blocks = parent == b"/blocks" or parent.endswith(b"/blocks")
    if not name or (parent and not in_blocks):
        return None
    from dsbackup.multiformats import (
        MultiformatError,
        b32_decode,
        decode_cid,
        decode_multihash,
    )

    try:
        raw = b32_decode(name)
        if raw[:1] == b"\x01":
            decode_cid(raw)
            return REASON_CIDV1
        mh = decode_multihash(raw)
    except MultiformatError:
        return REASON_NOT_MH if in_blocks else None
    if mh.code != 0x12 or len(mh.digest) != 32:
        return REASON_OTHER_HASH
    return None


@dataclass
class BlockTally:
    """What ``--check-blocks`` did: blocks re-hashed, and block keys it could not check by
    reason (with the first such key of each reason)."""

    checked: int = 0
    unchecked: dict[str, int] = field(default_factory=dict)
    examples: dict[str, bytes] = field(default_factory=dict)

    def merge(self, other: BlockTally) -> None:
        self.checked += other.checked
        for reason, n in other.unchecked.items():
            self.unchecked[reason] = self.unchecked.get(reason, 0) + n
            self.examples.setdefault(reason, other.examples[reason])

    @property
    def unchecked_total(self) -> int:
        return sum(self.unchecked.values())


def check_payload_blocks(payload: memoryview | bytes, where: str, chunk: int,
                         tally: BlockTally | None = None) -> int:
    """Re-hash every block of a (checked) chunk payload; returns how many were checked.
    With ``tally``, also counts it there with the block keys that could not be checked."""
    try:
        keys, values = decode_records(payload)
    except FramingError as exc:
        raise IntegrityError(f"{where}: {exc}", chunk=chunk) from None
    checked = 0
    for k, v in zip(keys, values):
        ok = block_matches(k, v)
        if ok is None:
            if tally is not None:
                reason = unchecked_reason(k)
                if reason is not None:
                    tally.unchecked[reason] = tally.unchecked.get(reason, 0) + 1
                    tally.examples.setdefault(reason, bytes(k))
            continue
        if not ok:
            raise IntegrityError(f"{where}: block {k.decode('ascii', 'replace')} does not hash "
                                 "to its key (sha2-256)", chunk=chunk)
        checked += 1
    if tally is not None:
        tally.checked += checked
    return checked
