"""dsbackup._ext.compress: a body's encoding does not depend on where the engine state lies.

ISA-L 2.30-2.32's x86 level 1/2 body hashed a stream's position 2 from the stream's address
(see LEAD in ext/compress.pyx). Each engine state below is a separate allocation kept alive,
so the same bytes are compressed by several hundred isal_zstreams at different addresses.
Before the fix, the 24-byte input gave 2-4 encodings over 2000 states (about one state in
20 took a minority one), so 300 states missed it with odds of about 1e-6.
"""

import random
import zlib

import pytest

from dsbackup._ext import compress

STATES = 300
# an input on which the old first-byte path changed the encoding for about 1 address in 20
# (short, so a one-call stream gets ISA-L's smallest hash table)
SENSITIVE = b"baabbabbaaabbbaabbabaaba"


def _keys(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    keys = sorted(b"/blocks/CIQ" + bytes(rnd.choices(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", k=20))
                  for _ in range(n))
    return b"".join(len(k).to_bytes(2, "little") + k for k in keys)


def _encodings(data: bytes, level: int, pad_to: int) -> set[bytes]:
    """The distinct bodies of ``data`` over STATES engine states alive at once."""
    saved = getattr(compress._tls, "deflater", None)
    states, seen = [], set()
    try:
        for _ in range(STATES):
            states.append(compress._Deflater())
            compress._tls.deflater = states[-1]
            body = compress.deflate_body(data, level, pad_to)
            seen.add(bytes(body.data))
    finally:
        compress._tls.deflater = saved
    return seen


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("data,pad_to", [
    (SENSITIVE, 1),                              # one call, end of stream
    (SENSITIVE, 512),                            # then zero padding
    (_keys(60, 1), 1),                           # a small catalog
    (_keys(400, 2), 512),                        # a larger one
    (random.Random(3).randbytes(70_000) + _keys(300, 3), 512),  # stored + compressed runs
], ids=["24B", "24B-padded", "keys-1KB", "keys-13KB", "mixed"])
def test_same_encoding_at_every_engine_address(data, pad_to, level):
    seen = _encodings(data, level, pad_to)
    assert len(seen) == 1, f"{len(seen)} encodings of the same {len(data)} bytes"
    padded = data + b"\0" * (-len(data) % pad_to)
    assert zlib.decompress(seen.pop(), -15) == padded


def test_streams_shorter_than_the_lead_round_trip():
    """Runs of 1..40 bytes: a lone lead, a lead then more, data then padding inside the lead."""
    for n in range(1, 41):
        data = bytes(range(n))
        for level in (1, 2, 3):
            for pad_to in (1, 8, 512):
                body = compress.deflate_body(data, level, pad_to)
                padded = data + b"\0" * (-n % pad_to)
                assert zlib.decompress(bytes(body.data), -15) == padded, (n, level, pad_to)
                assert body.crc32 == zlib.crc32(padded)
