"""Hostile and damaged zstd chunks (docs/FORMAT.md §11.6): every member checksum is recomputed
around a bad frame, so only the frame's own checks can catch it; each is damage (exit 3)
naming the chunk. A declared size beyond the format's ratio is refused before allocation;
an unknown flag bit is unsupported (exit 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup._ext.checksum import crc32, crc32_combine, xxh3_64
from dsbackup._ext.compress import deflate_body, tar_header
from dsbackup._ext.framing import encode_records
from dsbackup._plain import replace
from dsbackup.archive import format as fmt
from dsbackup.archive.index import IndexBuilder
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.errors import IntegrityError, UnsupportedArchive
from dsbackup.pipeline.chunks import ReadyChunk

SRC = Path(__file__).resolve().parents[2] / "src"
V, FLAGS = 2, fmt.FLAG_ZSTD


def payload(i: int) -> bytes:
    keys = [b"k%03d-%05d" % (i, j) for j in range(300)]
    return encode_records(keys, [b"value %d " % j * 5 for j in range(300)])


def frame(data: bytes, level: int = 1) -> bytes:
    b = deflate_body(data, 200 + level)  # a bare frame (dsbackup.codec.ZSTD_FRAME)
    return bytes(b.data)


def write_archive(path: Path, n: int = 3) -> Path:
    from dsbackup._ext.framing import scan_payload

    with ArchiveWriter(path, manifest={"format": "dsbackup"}, codec="zstd") as w:
        for i in range(n):
            p = payload(i)
            info = scan_payload(p)
            w.add_chunk(ReadyChunk(info.record_count, bytes(info.first_key),
                                   bytes(info.last_key), info.keys_xxh3, xxh3_64(p),
                                   info.raw_bytes, deflate_body(p, 101)))
        w.finish({})
    return path


def chunk_member(seq: int, records: int, entry_data: bytes) -> bytes:
    """A chunk member of a zstd archive holding `entry_data` as its tar entry, stored blocks,
    every checksum right."""
    body = deflate_body(entry_data, 0)
    sub = fmt.chunk_subfield(seq, records, len(entry_data), xxh3_64(entry_data), V, FLAGS)
    hdr = tar_header(fmt.chunk_name(seq), len(entry_data), 0)
    crc = crc32_combine(crc32(hdr), body.crc32, body.size)
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + bytes(body.data)
            + fmt.member_tail(crc, 512 + body.size))


def data_member(data: bytes, mtype: int, name: bytes) -> bytes:
    body = deflate_body(data, 0)
    sub = fmt.data_subfield(mtype, len(data), xxh3_64(data), V, FLAGS)
    hdr = tar_header(name, len(data), 0)
    crc = crc32_combine(crc32(hdr), body.crc32, body.size)
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + bytes(body.data)
            + fmt.member_tail(crc, 512 + body.size))


def rebuilt(src: Path, dst: Path, seq: int, entry_data: bytes, **entry_changes) -> Path:
    """`src` with chunk `seq`'s tar entry replaced by `entry_data` (and its index entry's
    fields changed), every member, index and trailer checksum recomputed."""
    data = src.read_bytes()
    with ArchiveReader(src) as r:
        mlen = r.index.manifest_length
        entries = list(r.index.entries())
        t = r.trailer
    out = bytearray(data[:mlen])
    ib = IndexBuilder()
    for e in entries:
        raw = (chunk_member(e.seq, e.records, entry_data) if e.seq == seq
               else data[e.offset:e.offset + e.length])
        changes = entry_changes if e.seq == seq else {}
        ib.add_chunk(replace(e, offset=len(out), length=len(raw),
                                         member_xxh3=xxh3_64(raw), **changes))
        out += raw
    idx = ib.encode(mlen, xxh3_64(bytes(out[:mlen])))
    ioff = len(out)
    im = data_member(idx, fmt.TYPE_INDEX, fmt.INDEX_NAME)
    out += im
    sm = data[t.summary_offset:t.summary_offset + t.summary_length]
    soff = len(out)
    out += sm
    out += fmt.Trailer(ioff, len(im), xxh3_64(im), soff, len(sm), xxh3_64(sm), len(entries),
                       len(out), version=V, flags=FLAGS).encode()
    dst.write_bytes(bytes(out))
    return dst


@pytest.fixture
def good(tmp_path) -> Path:
    return write_archive(tmp_path / "good.tar.gz")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *args],
                          env=dict(os.environ, PYTHONPATH=str(SRC)), capture_output=True,
                          text=True, timeout=300)


def test_the_rebuilder_makes_a_readable_archive(tmp_path, good):
    p = rebuilt(good, tmp_path / "same.tar.gz", 1, frame(payload(1)))
    assert verify_archive(p, deep=True).ok
    with ArchiveReader(p) as r:
        assert bytes(r.read_chunk(1)) == payload(1)


def _bad(path: Path, match: str, chunk: int = 1) -> None:
    with ArchiveReader(path) as r:
        with pytest.raises(IntegrityError, match=match) as ei:
            r.read_chunk(chunk)
        assert ei.value.chunk == chunk
    rep = verify_archive(path, deep=True)
    assert not rep.ok and any(f"chunk {chunk}" in e for e in rep.errors)


def test_trailing_garbage_after_the_frame(tmp_path, good):
    p = rebuilt(good, tmp_path / "t.tar.gz", 1, frame(payload(1)) + b"garbage!")
    assert verify_archive(p, deep=False).ok  # every checksum is right
    _bad(p, "bytes after the zstd frame")


def test_two_frames(tmp_path, good):
    p = rebuilt(good, tmp_path / "two.tar.gz", 1, frame(payload(1)) + frame(b""))
    _bad(p, "bytes after the zstd frame")


def test_content_size_other_than_the_index(tmp_path, good):
    p = rebuilt(good, tmp_path / "cs.tar.gz", 1, frame(payload(1) + b"x"))
    _bad(p, "declares .* bytes of content, the index")


def test_frame_of_other_bytes_of_the_same_length(tmp_path, good):
    other = bytearray(payload(1))
    other[-1] ^= 1
    p = rebuilt(good, tmp_path / "o.tar.gz", 1, frame(bytes(other)))
    _bad(p, "payload XXH3 mismatch")


def test_not_a_frame_and_a_frame_without_content_size(tmp_path, good):
    p = rebuilt(good, tmp_path / "nf.tar.gz", 1, b"not a zstd frame at all")
    _bad(p, "not a zstd frame")
    if shutil.which("zstd") is None:
        pytest.skip("no zstd CLI")
    piped = subprocess.run(["zstd", "-c", "-q"], input=payload(1), capture_output=True,
                           check=True).stdout  # from a pipe: no content size
    p = rebuilt(good, tmp_path / "nocs.tar.gz", 1, piped)
    _bad(p, "does not declare its content size")


def test_a_huge_declared_size_is_refused_before_allocation(tmp_path, good):
    huge = 1 << 40
    # magic, FHD (single segment, 8-byte content size), the size, one empty raw last block
    bomb = b"\x28\xb5\x2f\xfd" + b"\xe0" + huge.to_bytes(8, "little") + b"\x01\x00\x00"
    p = rebuilt(good, tmp_path / "bomb.tar.gz", 1, bomb, payload_len=huge)
    _bad(p, "decompression bomb or damage")


def test_bit_flips_in_a_zstd_chunk_exit_3_naming_it(tmp_path, good):
    data = bytearray(good.read_bytes())
    with ArchiveReader(good) as r:
        e = r.entry(1)
    for k, off in enumerate((e.offset + 100, e.offset + e.length // 2, e.offset + e.length - 20)):
        bad = bytearray(data)
        bad[off] ^= 0x10
        p = tmp_path / f"flip{k}.tar.gz"
        p.write_bytes(bytes(bad))
        r = cli("verify", str(p))
        assert r.returncode == 3 and "chunk 1" in r.stdout + r.stderr, r.stdout + r.stderr
        r = cli("restore", str(p), f"lmdb:{tmp_path / f'dst{k}'}")
        assert r.returncode == 3 and "chunk 1" in r.stderr, r.stderr


def test_an_unknown_flag_bit_3_is_unsupported(tmp_path, good):
    data = good.read_bytes()
    t = fmt.Trailer.decode(data[-fmt.TRAILER_SIZE:], len(data))
    p = tmp_path / "bit3.tar.gz"
    p.write_bytes(data[:-fmt.TRAILER_SIZE] + replace(t, flags=t.flags | 8).encode())
    with pytest.raises(UnsupportedArchive, match="unknown subfield flags 0x8"):
        ArchiveReader(p)
    r = cli("verify", str(p))
    assert r.returncode == 2 and "unsupported" in r.stderr + r.stdout


def test_a_declared_frame_length_beyond_the_member_is_refused_before_allocation(tmp_path,
                                                                                 good,
                                                                                 monkeypatch):
    """The subfield's and tar header's frame length are the attacker's too: the ratio limit
    must not be taken from them, or a 16-byte frame declaring 1 TiB passes it (§11.6: the
    member's length follows from the frame's)."""
    huge, declared = 1 << 40, (1 << 33) - 1
    bomb = b"\x28\xb5\x2f\xfd" + b"\xe0" + huge.to_bytes(8, "little") + b"\x01\x00\x00"

    def lying_member(seq: int, records: int, entry_data: bytes) -> bytes:
        body = deflate_body(entry_data, 0)
        sub = fmt.chunk_subfield(seq, records, declared, xxh3_64(entry_data), V, FLAGS)
        hdr = tar_header(fmt.chunk_name(seq), declared, 0)
        crc = crc32_combine(crc32(hdr), body.crc32, body.size)
        return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + bytes(body.data)
                + fmt.member_tail(crc, 512 + body.size))

    monkeypatch.setitem(globals(), "chunk_member", lying_member)
    p = rebuilt(good, tmp_path / "lie.tar.gz", 1, bomb, payload_len=huge)
    _bad(p, "member length")
    r = cli("verify", str(p))
    assert r.returncode == 3 and "chunk 1" in r.stdout + r.stderr, r.stdout + r.stderr
