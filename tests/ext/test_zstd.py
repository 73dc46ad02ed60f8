"""The native zstd chunk codec (ext/zstdcodec.pxi, docs/FORMAT.md §11.6): bodies of one frame
in stored deflate blocks, and zstd_decode's walk of those blocks."""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib

import pytest

from dsbackup._ext import compress
from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.compress import MemberError, zstd_content_size, zstd_decode


def data(n: int = 400_000) -> bytes:
    return (b"some words repeat, " * (n // 38)) + os.urandom(n // 2)


def test_stored_body_is_the_frame_in_65535_byte_stored_blocks():
    d = data()
    b = compress.deflate_body(d, 101)
    assert b.codec == 1 and b.content_len == len(d)
    out = zlib.decompress(bytes(b.data), -15)  # any inflater reads it
    assert len(out) == b.size and b.size % 512 == 0 and b.size - b.input_len < 512
    frame = out[:b.input_len]
    assert zlib.crc32(out) == b.crc32 and xxh3_64(frame) == b.xxh3
    assert zstd_content_size(frame) == len(d)
    raw = bytes(b.data)
    pos, sizes = 0, []
    while True:
        final, ln = raw[pos], int.from_bytes(raw[pos + 1:pos + 3], "little")
        sizes.append(ln)
        pos += 5 + ln
        if final:
            break
    assert pos == len(raw) and all(s == 65535 for s in sizes[:-1]) and len(sizes) > 1
    bare = compress.deflate_body(d, 201)
    assert bare.codec == 2 and bytes(bare.data) == frame  # the same frame, deterministic
    if shutil.which("zstd"):
        assert subprocess.run(["zstd", "-d", "-c"], input=frame, capture_output=True,
                              check=True).stdout == d


def test_decode_round_trip_and_crc_continuation():
    d = data()
    b = compress.deflate_body(d, 103)
    payload, crc, fx = zstd_decode(b.data, b.input_len, len(d), True, 0)
    assert payload == d and crc == b.crc32 and fx == b.xxh3
    frame = bytes(compress.deflate_body(d, 203).data)
    assert zstd_decode(frame, len(frame), len(d), False)[0] == d


@pytest.mark.parametrize("damage,match", [
    (lambda r: r[:3] + bytes([r[3] ^ 1]) + r[4:], "invalid or truncated stored block"),
    (lambda r: r[:-1], "invalid or truncated stored block"),
    (lambda r: r[:-1] + b"\x01", "non-zero tar padding"),
])
def test_decode_refuses_damaged_blocks(damage, match):
    d = data(100_000)
    b = compress.deflate_body(d, 101)
    raw = bytes(b.data)
    if b.size == b.input_len:
        pytest.skip("no padding to damage")
    with pytest.raises(MemberError, match=match):
        zstd_decode(damage(raw), b.input_len, len(d), True)


def test_decode_refuses_a_short_middle_block():
    d = data(60_000)
    frame = bytes(compress.deflate_body(d, 201).data)
    pad = (512 - len(frame) % 512) % 512
    body = frame + bytes(pad)
    blocks = b""
    for i, piece in enumerate((body[:1000], body[1000:])):
        final = 1 if i == 1 else 0
        n = len(piece)
        blocks += bytes([final]) + n.to_bytes(2, "little") + (n ^ 0xFFFF).to_bytes(2, "little")
        blocks += piece
    assert 1000 < len(body) <= 66535
    with pytest.raises(MemberError, match="wrong lengths"):
        zstd_decode(blocks, len(frame), len(d), True)


def test_levels_out_of_range_are_refused():
    for lvl in (100, 120, 200, 220, 10, -1):
        with pytest.raises(ValueError, match="compression level"):
            compress.deflate_body(b"x", lvl)


def test_a_skippable_frame_is_not_a_chunk_frame():
    """§11.6: exactly one zstd frame, magic 28 b5 2f fd, no skippable frames. libzstd reports
    a skippable frame's content size as 0 and decodes it to nothing, so without a check of
    the magic it passes as an empty payload."""
    skip = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd"
    assert zstd_content_size(skip) == -2
    with pytest.raises(MemberError, match="not a zstd frame"):
        zstd_decode(skip, len(skip), 0, False)
    padded = skip + bytes(512 - len(skip))
    stored = b"\x01" + len(padded).to_bytes(2, "little") + (len(padded) ^ 0xFFFF).to_bytes(
        2, "little") + padded
    with pytest.raises(MemberError, match="not a zstd frame"):
        zstd_decode(stored, len(skip), 0, True)
