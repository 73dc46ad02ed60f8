"""dsbackup._ext.compress: member bodies, tar headers, bounded inflate."""

import gzip
import os
import random
import subprocess
import tarfile
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsbackup._ext import checksum, compress

MemberError = compress.MemberError
GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def mixed_block(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghijklmnop") for _ in range(rnd.randint(2, 9)))
             for _ in range(800)]
    text = b" ".join(rnd.choices(words, weights=[1 / (i + 1) for i in range(800)], k=n // 3))
    return rnd.randbytes(n // 2) + text[: n - n // 2]


def member(name: bytes, data: bytes, level: int) -> bytes:
    """A gzip member as the archive writer builds it (header stored apart)."""
    body = compress.deflate_body(data, level)
    hdr = compress.tar_header(name, len(data), 0)
    crc = checksum.crc32_combine(checksum.crc32(hdr), body.crc32, body.size)
    isize = (512 + body.size) % 2**32
    return (GZIP_HEAD + compress.STORED_TAR_PREFIX + hdr + body.data
            + crc.to_bytes(4, "little") + isize.to_bytes(4, "little"))


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def test_engines_documented():
    expected = {0: "stored", 1: "isal-1", 2: "isal-2", 3: "isal-3"}
    expected.update({lvl: f"zlib-{lvl}" for lvl in range(4, 10)})
    assert expected == compress.ENGINES


@pytest.mark.parametrize("level", range(10))
def test_member_is_valid_gzip_and_tar(tmp_path, level):
    data = mixed_block(300_000, seed=level)
    m1 = member(b"dsbackup/chunks/00000000", data, level)
    m2 = member(b"dsbackup/index", b"", level)
    end = GZIP_HEAD + b"\x01\x00\x04\xff\xfb" + bytes(1024) + \
        zlib.crc32(bytes(1024)).to_bytes(4, "little") + (1024).to_bytes(4, "little")
    archive = m1 + m2 + end
    raw = gzip.decompress(archive)
    hdr = compress.tar_header(b"dsbackup/chunks/00000000", len(data), 0)
    assert raw[:512 + len(padded(data))] == hdr + padded(data)
    body = compress.deflate_body(data, level)
    assert checksum.crc32_combine(zlib.crc32(hdr), body.crc32, body.size) == \
        zlib.crc32(hdr + padded(data))
    path = tmp_path / "a.tar.gz"
    path.write_bytes(archive)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    with tarfile.open(path) as tf:
        assert tf.getnames() == ["dsbackup/chunks/00000000", "dsbackup/index"]
        assert tf.extractfile("dsbackup/chunks/00000000").read() == data
        assert tf.getmember("dsbackup/chunks/00000000").uname == "dsbackup"
    listing = subprocess.run(["tar", "-tzf", str(path)], check=True, capture_output=True)
    assert listing.stdout.split() == [b"dsbackup/chunks/00000000", b"dsbackup/index"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 9), st.sampled_from([1, 7, 512, 4096]))
def test_body_round_trip(data, level, pad_to):
    body = compress.deflate_body(data, level, pad_to)
    pad = -len(data) % pad_to
    assert body.size == len(data) + pad and body.input_len == len(data)
    assert body.crc32 == zlib.crc32(data + bytes(pad))
    out, used = compress.inflate_raw(body.data + b"\x01trailing", 1 << 20)
    assert out == data + bytes(pad)
    assert used == len(body.data)
    d = zlib.decompressobj(-15)
    assert d.decompress(body.data) == data + bytes(pad) and d.eof and not d.unused_data


def test_empty_body_and_determinism():
    for level in range(10):
        empty = compress.deflate_body(b"", level)
        assert (empty.data, empty.size, empty.crc32) == (b"\x01\x00\x00\xff\xff", 0, 0)
        data = mixed_block(200_000, seed=3)
        assert compress.deflate_body(data, level).data == compress.deflate_body(data, level).data


def test_stored_level_0_layout():
    data = os.urandom(70_000)
    body = compress.deflate_body(data, 0)
    total = 70_144  # padded to 512
    assert body.data[:5] == b"\x00\xff\xff\x00\x00"
    assert len(body.data) == total + 10
    assert body.data[5 + 65535] == 1  # final block header


@pytest.mark.parametrize("level", [1, 2, 3, 4, 9])
def test_incompressible_input_never_exceeds_stored(level):
    data = os.urandom(1 << 20) + b"tail"
    body = compress.deflate_body(data, level)
    assert len(body.data) <= len(padded(data)) + 5 * 17
    assert body.crc32 == zlib.crc32(padded(data))
    assert compress.inflate_raw(body.data, 2 << 20)[0] == padded(data)


SEGMENT = 64 << 10


def text_bytes(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghijklmnop") for _ in range(rnd.randint(2, 9)))
             for _ in range(500)]
    return b" ".join(rnd.choices(words, k=n // 3 + 8))[:n]


def check_body(data: bytes, level: int, pad_to: int = 512):
    body = compress.deflate_body(data, level, pad_to)
    full = data + bytes(-len(data) % pad_to)
    d = zlib.decompressobj(-15)
    assert d.decompress(body.data) == full and d.eof and not d.unused_data
    assert body.crc32 == zlib.crc32(full) and body.size == len(full)
    assert len(body.data) <= len(full) + 5 * max(1, -(-len(full) // 65535))
    return body


@pytest.mark.parametrize("level", [1, 2, 3])
def test_random_segments_are_stored_text_segments_compressed(level):
    rnd = random.Random(level)
    text, noise = text_bytes(2 * SEGMENT), rnd.randbytes(2 * SEGMENT)
    body = check_body(text[:SEGMENT] + noise + text[SEGMENT:], level)
    # the two random segments cost their stored size; the text still compresses (as two
    # streams without shared history: a few % more than in one)
    text_only = compress.deflate_body(text, level)
    assert len(body.data) <= len(noise) + 5 * 3 + 1.05 * len(text_only.data)
    # all random: exactly the stored encoding (ISA-L is not run on it)
    assert compress.deflate_body(noise, level).data == compress.deflate_body(noise, 0).data


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(),
                          st.sampled_from([0, 1, 100, 16383, 16384, 40000, SEGMENT - 1, SEGMENT,
                                           SEGMENT + 1, 3 * SEGMENT + 17])),
                max_size=6),
       st.integers(1, 3), st.sampled_from([1, 512, 4096, 1 << 20]), st.integers(0, 2**32))
def test_mixed_segments_round_trip(parts, level, pad_to, seed):
    """Any mix of random and text pieces, at and around segment boundaries, inflates to the
    input plus padding with the right CRC, never larger than stored, deterministically."""
    rnd = random.Random(seed)
    data = b"".join(rnd.randbytes(n) if noisy else text_bytes(n, seed) for noisy, n in parts)
    body = check_body(data, level, pad_to)
    assert compress.deflate_body(data, level, pad_to).data == body.data


def test_high_entropy_but_compressible_text_is_not_stored():
    # base64 has ~6 bits per byte: compressible, so it must go through ISA-L
    import base64
    data = base64.b64encode(os.urandom(3 * SEGMENT))
    body = check_body(data, 1)
    assert len(body.data) < 0.8 * len(data)


def test_bad_level():
    with pytest.raises(ValueError):
        compress.deflate_body(b"x", 10)
    with pytest.raises(ValueError):
        compress.deflate_body(b"x", -1)


def test_tar_header_matches_tarfile():
    hdr = compress.tar_header(b"dsbackup/manifest.json", 1234, 1_700_000_000)
    info = tarfile.TarInfo.frombuf(hdr, "utf-8", "strict")
    assert (info.name, info.size, info.mtime, info.mode) == \
        ("dsbackup/manifest.json", 1234, 1_700_000_000, 0o644)
    assert (info.uname, info.gname, info.uid, info.gid) == ("dsbackup", "dsbackup", 0, 0)
    assert hdr[100:108] == b"0000644\0" and hdr[257:265] == b"ustar\x0000"
    assert compress.parse_tar_header(hdr) == (b"dsbackup/manifest.json", 1234, 1_700_000_000)
    assert compress.parse_tar_header(compress.tar_header(b"n" * 100, 0, 0))[0] == b"n" * 100
    with pytest.raises(ValueError):
        compress.tar_header(b"n" * 101, 0, 0)
    with pytest.raises(ValueError):
        compress.tar_header(b"x", 8**11, 0)


@pytest.mark.parametrize("offset,value,what", [
    (0, 0, "name"), (257, ord("X"), "magic"), (263, ord("1"), "version"),
    (156, ord("5"), "typeflag"), (130, ord("9"), "size"), (150, ord("8"), "chksum"),
    (400, 1, "prefix"), (10, ord("z"), "checksum"),
])
def test_parse_tar_header_rejects(offset, value, what):
    hdr = bytearray(compress.tar_header(b"dsbackup/index", 10, 0))
    hdr[offset] = value
    if what not in ("checksum", "chksum"):  # fix the checksum so the targeted check fires
        hdr[148:156] = b"        "
        hdr[148:156] = format(sum(hdr), "06o").encode() + b"\0 "
    with pytest.raises(MemberError, match=what if what != "name" else "name"):
        compress.parse_tar_header(bytes(hdr))
    with pytest.raises(MemberError):
        compress.parse_tar_header(b"\0" * 511)


def test_inflate_caps_bomb_quickly():
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = bomb.compress(bytes(200 << 20)) + bomb.flush()
    assert len(stream) * 1000 < 200 << 20
    t0 = time.perf_counter()
    with pytest.raises(MemberError, match="more than 65536"):
        compress.inflate_raw(stream, 65536)
    with pytest.raises(MemberError, match="more than the declared"):
        compress.inflate_raw(stream, 1 << 40, expected_output=1000)
    with pytest.raises(MemberError, match="more than"):
        compress.inflate_raw_into(stream, bytearray(4096))
    assert time.perf_counter() - t0 < 1.0


def test_inflate_exact_limits():
    data = mixed_block(100_000)
    body = compress.deflate_body(data, 1, 1).data
    assert compress.inflate_raw(body, len(data))[0] == data
    assert compress.inflate_raw(body, len(data), expected_output=len(data))[0] == data
    with pytest.raises(MemberError, match="more than"):
        compress.inflate_raw(body, len(data) - 1)
    with pytest.raises(MemberError, match="declared"):
        compress.inflate_raw(body, len(data) * 2, expected_output=len(data) + 1)
    buf = bytearray(len(data))
    assert compress.inflate_raw_into(body, buf) == (len(data), len(body))
    assert bytes(buf) == data
    big = bytearray(len(data) + 10)
    assert compress.inflate_raw_into(body, big)[0] == len(data)


@pytest.mark.parametrize("level", [0, 1, 6])
def test_inflate_detects_truncation_at_every_cut(level):
    data = mixed_block(5000, seed=level)
    body = compress.deflate_body(data, level).data
    for cut in range(len(body)):
        with pytest.raises(MemberError):
            compress.inflate_raw(body[:cut], 1 << 20)


def test_inflate_detects_corruption():
    data = mixed_block(50_000)
    body = bytearray(compress.deflate_body(data, 6).data)
    detected = 0
    rnd = random.Random(5)
    for _ in range(200):
        bad = bytearray(body)
        bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        try:
            out, _ = compress.inflate_raw(bytes(bad), 1 << 20, expected_output=len(data) + 432)
        except MemberError:
            detected += 1
        else:
            detected += out != data + bytes(432)  # silent damage would be caught by the CRC
    assert detected == 200
    with pytest.raises(MemberError, match="invalid"):
        compress.inflate_raw(b"\x07" + bytes(20), 1000)  # reserved block type 3
