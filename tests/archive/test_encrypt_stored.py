"""The writer's sealing split in two (archive/crypto.py ``ArchiveCipher.encrypt_stored``, then
``frame_into``): `cryptography`'s AES-GCM writes the
ciphertext into the stored blocks' data, native code adds the framing, tag, padding, CRC-32
and XXH3. The bytes and fields equal the one native pass (``seal_into``) for every size around
the block and padding edges; the member opens only with the right key and unaltered bytes."""

from __future__ import annotations

import random

import pytest

from dsbackup._ext import seal
from dsbackup._ext.seal import GcmKey, data_offsets, frame_into, seal_into, sealed_size
from dsbackup.archive import crypto
from dsbackup.errors import IntegrityError

STORED = 65535
SIZES = [0, 1, 15, 16, 17, 495, 496, 497, 511, 512, STORED - 16, STORED - 15, STORED - 8,
         STORED - 1, STORED, STORED + 1, 2 * STORED - 16, 2 * STORED - 10, 2 * STORED,
         3 * STORED - 16 - 512, 1 << 20, (1 << 20) + 7]
KEY = bytes(range(32))
ARCHIVE_ID = b"\x07" * 16


def _cipher(key: bytes = KEY) -> crypto.ArchiveCipher:
    return crypto.ArchiveCipher(ARCHIVE_ID, bytearray(key), 2)


def _native(c: crypto.ArchiveCipher, mtype: int, seq: int, data: bytes, epoch: int = 0):
    out = bytearray(sealed_size(len(data)))
    fields = seal_into(GcmKey(KEY), c.nonce(mtype, seq, epoch),
                       c.aad(mtype, seq, len(data), epoch), data, out)
    return fields, out


@pytest.mark.parametrize("n", SIZES + random.Random(9).sample(range(1, 300_000), 10))
def test_encrypt_then_frame_equals_seal_into(n):
    """Into a reused buffer holding older bytes (and longer than needed): the same bytes and
    fields as seal_into, nothing written past them."""
    rnd = random.Random(n)
    c = _cipher()
    data = rnd.randbytes(n)
    fields, ref = _native(c, 1, n % 1000, data, epoch=3)
    need = sealed_size(n)
    out = bytearray(rnd.randbytes(need + 100))
    tail = bytes(out[need:])
    tag = c.encrypt_stored(1, n % 1000, data, out, 3)
    assert len(tag) == 16
    assert frame_into(tag, n, out) == fields
    assert out[:need] == ref and out[need:] == tail
    assert [b - a for a, b in data_offsets(n)] == [min(STORED, n - i)
                                                   for i in range(0, n, STORED)]


def test_a_body_in_a_memoryview_of_another_shape_and_bad_arguments():
    c = _cipher()
    data = random.Random(1).randbytes(4096)
    fields, ref = _native(c, 1, 5, data)
    out = bytearray(sealed_size(4096))
    tag = c.encrypt_stored(1, 5, memoryview(data).cast("I"), out)  # read as bytes
    assert frame_into(tag, 4096, out) == fields and out == ref
    with pytest.raises(ValueError, match="output buffer"):
        c.encrypt_stored(1, 5, data, bytearray(sealed_size(4096) - 1))
    with pytest.raises(ValueError, match="output buffer"):
        frame_into(tag, 4096, bytearray(sealed_size(4096) - 1))
    with pytest.raises(ValueError, match="tag"):
        frame_into(tag[:15], 4096, out)
    with pytest.raises(ValueError, match="tag"):
        frame_into(b"", 4096, out)


def _open(c: crypto.ArchiveCipher, body: bytes | bytearray, n: int, seq: int = 5) -> bytes:
    """Open a sealed body as the reader does: ``ciphertext || tag`` as views of its stored
    blocks' data (each block's LEN read from its header), then ``open_pieces``."""
    mv, pieces, o, left = memoryview(bytes(body)), [], 0, n + 16
    while left:
        blk = mv[o + 1] | mv[o + 2] << 8
        pieces.append(mv[o + 5:o + 5 + min(blk, left)])
        left -= len(pieces[-1])
        o += 5 + blk
    return bytes(c.open_pieces(1, seq, pieces, "chunk 5", chunk=5))


def test_opens_with_the_key_and_fails_with_another_or_a_flipped_bit():
    rnd = random.Random(3)
    n = 3 * STORED + 1234
    data = rnd.randbytes(n)
    c = _cipher()
    out = bytearray(sealed_size(n))
    frame_into(c.encrypt_stored(1, 5, data, out), n, out)
    assert _open(c, out, n) == data
    with pytest.raises(IntegrityError, match="authentication failed"):
        _open(_cipher(bytes(32)), out, n)
    with pytest.raises(IntegrityError, match="authentication failed"):
        _open(c, out, n, seq=6)  # another chunk's nonce and associated data
    for a, b in rnd.sample(data_offsets(n), 3):  # a bit of the ciphertext in some block
        bad = bytearray(out)
        bad[rnd.randrange(a, b)] ^= 1 << rnd.randrange(8)
        with pytest.raises(IntegrityError, match="authentication failed"):
            _open(c, bad, n)
    bad = bytearray(out)  # a bit of the tag
    tag_at = data_offsets(n)[-1][1]
    bad[tag_at + rnd.randrange(16)] ^= 1
    with pytest.raises(IntegrityError, match="authentication failed"):
        _open(c, bad, n)


def test_a_library_failure_is_a_seal_error(monkeypatch):
    """`cryptography` refusing (an internal error) is reported as SealError (exit 2), its
    message naming no secret."""
    c = _cipher()

    class Broken:
        def __init__(self, *args):
            pass

        def encryptor(self):
            raise RuntimeError("internal " + KEY.hex())

    c._algorithm()
    monkeypatch.setattr(c, "_cipher_cls", Broken)
    with pytest.raises(seal.SealError, match="could not encrypt 10 bytes") as e:
        c.encrypt_stored(1, 0, bytes(10), bytearray(sealed_size(10)))
    assert KEY.hex() not in str(e.value)
