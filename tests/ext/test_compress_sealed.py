"""Chunk level DEFLATE_SEALED + L (dsbackup.codec): the same deflate bytes as level L, without
the CRC-32 an encrypted archive never reads (its member CRC covers the ciphertext)."""

from __future__ import annotations

import os
import random
import zlib

import pytest

from dsbackup import codec as codecs
from dsbackup._ext.compress import deflate_body
from dsbackup._ext.framing import Chunker


def _inputs() -> list[bytes]:
    rnd = random.Random(5)
    out = [b""]
    for n in (1, 511, 513, 65535, 65536, 70000, 300_000):
        text = bytes(rnd.choice(b"abcdefgh ") for _ in range(n))
        out += [os.urandom(n), bytes(n), text,
                text[: n // 2] + os.urandom(n - n // 2)]  # compressed and stored segments
    return out


@pytest.mark.parametrize("level", range(10))
def test_sealed_level_gives_the_same_bytes_without_the_crc(level):
    for data in _inputs():
        plain = deflate_body(data, level)
        sealed = deflate_body(data, codecs.DEFLATE_SEALED + level)
        assert bytes(sealed.data) == bytes(plain.data), (len(data), level)
        assert (sealed.size, sealed.input_len, sealed.content_len) == (
            plain.size, plain.input_len, plain.content_len)
        assert plain.crc32 == zlib.crc32(data + bytes(plain.size - len(data)))
        assert sealed.crc32 == 0
        assert (plain.codec, sealed.codec) == (codecs.BODY_DEFLATE, codecs.BODY_DEFLATE_SEALED)


def test_the_native_chunker_takes_the_sealed_level():
    keys = [b"/k/%05d" % i for i in range(2000)]
    vals = [(b"v%d " % i) * (i % 40) for i in range(2000)]
    bodies = {}
    for lvl in (1, codecs.DEFLATE_SEALED + 1):
        ch = Chunker(100, 1 << 20)
        out = ch.add_compress(keys, vals, lvl)
        last = ch.finish_compress(lvl)
        bodies[lvl] = [c.body for c in out + ([last] if last else [])]
    plain, sealed = bodies[1], bodies[codecs.DEFLATE_SEALED + 1]
    assert len(plain) == len(sealed) > 5
    assert [bytes(b.data) for b in plain] == [bytes(b.data) for b in sealed]
    assert all(b.crc32 == 0 and b.codec == codecs.BODY_DEFLATE_SEALED for b in sealed)
    assert all(b.codec == codecs.BODY_DEFLATE for b in plain)


@pytest.mark.parametrize("bad", [codecs.DEFLATE_SEALED - 1, codecs.DEFLATE_SEALED + 10])
def test_levels_beside_the_sealed_range_are_refused(bad):
    with pytest.raises(ValueError, match="compression level"):
        deflate_body(b"x", bad)


def test_chunk_levels_of_the_codecs():
    assert codecs.chunk_level(codecs.GZIP, 3) == 3
    assert codecs.chunk_level(codecs.GZIP, 3, sealed=True) == codecs.DEFLATE_SEALED + 3
    assert codecs.deflate_level(codecs.DEFLATE_SEALED + 3) == 3  # catalogs: as before
    assert codecs.body_codec(codecs.DEFLATE_SEALED + 3) == codecs.BODY_DEFLATE_SEALED
    assert not codecs.is_zstd(codecs.DEFLATE_SEALED + 3) and not codecs.is_zstd(9)
    assert codecs.is_zstd(codecs.chunk_level(codecs.ZSTD, 3, sealed=True))
    assert codecs.is_zstd(codecs.chunk_level(codecs.ZSTD, 3))
