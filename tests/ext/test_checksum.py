"""dsbackup._ext.checksum against the reference implementations (xxhash, zlib)."""

import mmap
import zlib

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from dsbackup._ext import checksum


@given(st.binary(max_size=5000), st.integers(0, 2**64 - 1))
def test_xxh3_64_matches_reference(data, seed):
    assert checksum.xxh3_64(data) == xxhash.xxh3_64_intdigest(data)
    assert checksum.xxh3_64(data, seed) == xxhash.xxh3_64_intdigest(data, seed)


@given(st.binary(max_size=5000))
def test_xxh3_128_canonical_big_endian(data):
    assert checksum.xxh3_128(data) == xxhash.xxh3_128_digest(data)
    assert len(checksum.xxh3_128(data)) == 16


@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1))
def test_crc32_matches_zlib(data, start):
    assert checksum.crc32(data) == zlib.crc32(data)
    assert checksum.crc32(data, start) == zlib.crc32(data, start)


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_crc32_combine(a, b):
    assert checksum.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_accepts_any_contiguous_buffer(tmp_path):
    data = bytes(range(256)) * 40
    ref = xxhash.xxh3_64_intdigest(data)
    assert checksum.xxh3_64(bytearray(data)) == ref
    assert checksum.xxh3_64(memoryview(data)) == ref
    assert checksum.xxh3_64(memoryview(b"xx" + data)[2:]) == ref
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert checksum.xxh3_64(m) == ref
        assert checksum.crc32(m) == zlib.crc32(data)
    with pytest.raises(BufferError):
        checksum.xxh3_64(memoryview(data)[::2])  # not contiguous


@given(st.lists(st.binary(max_size=700), max_size=8), st.integers(0, 2**64 - 1))
def test_streaming_equals_one_shot(parts, seed):
    h64 = checksum.Xxh3_64(seed)
    h128 = checksum.Xxh3_128()
    for p in parts:
        h64.update(p)
        h128.update(p)
    whole = b"".join(parts)
    assert h64.intdigest() == xxhash.xxh3_64_intdigest(whole, seed)
    assert h128.digest() == xxhash.xxh3_128_digest(whole)
    assert h128.hexdigest() == xxhash.xxh3_128_hexdigest(whole)
    h64.reset()
    assert h64.intdigest() == xxhash.xxh3_64_intdigest(b"", seed)


@pytest.mark.parametrize("offset,length", [(0, 0), (0, 1), (7, 1000), (0, 256 * 1024),
                                           (1, 256 * 1024 + 1), (3, 700_000), (0, 900_000)])
def test_xxh3_64_file_equals_hash_of_the_range(tmp_path, offset, length):
    data = bytes(range(256)) * 3600 + b"tail"
    p = tmp_path / "f"
    p.write_bytes(data)
    with open(p, "rb") as f:
        got = checksum.xxh3_64_file(f.fileno(), offset, length)
    assert got == xxhash.xxh3_64_intdigest(data[offset:offset + length])


def test_xxh3_64_file_short_file_and_bad_fd(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 1000)
    with open(p, "rb") as f, pytest.raises(EOFError, match="24 bytes short"):
        checksum.xxh3_64_file(f.fileno(), 10, 1014)
    with open(p, "wb") as f, pytest.raises(OSError):  # write-only: reads fail
        checksum.xxh3_64_file(f.fileno(), 0, 10)


@given(st.binary(max_size=80), st.binary(max_size=3000), st.integers(0, 1 << 40))
def test_stored_tar_member_frames_like_the_pieces(subfield, body, size):
    """One native call = the gzip head with the subfield, the header's stored block, the body,
    CRC-32/ISIZE of header + body (as zlib computes them) and XXH3 over all of it."""
    import struct

    from dsbackup._ext.compress import tar_header

    header = tar_header(b"dsbackup/chunks/00000007", 5, 0)
    bcrc = zlib.crc32(body)
    head, tail, mxxh = checksum.stored_tar_member(subfield, header, memoryview(body), bcrc, size)
    assert head == (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
                    + struct.pack("<H", 4 + len(subfield)) + b"DS"
                    + struct.pack("<H", len(subfield)) + subfield
                    + b"\x00\x00\x02\xff\xfd" + header)
    crc = checksum.crc32_combine(zlib.crc32(header), bcrc, size)
    assert tail == struct.pack("<II", crc, (512 + size) & 0xFFFFFFFF)
    assert mxxh == xxhash.xxh3_64_intdigest(head + body + tail)


def test_stored_tar_member_rejects_a_short_header():
    with pytest.raises(ValueError, match="512"):
        checksum.stored_tar_member(b"", bytes(511), b"", 0, 0)
