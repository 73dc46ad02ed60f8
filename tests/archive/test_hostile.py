"""Hostile archives: every one gives the package's own exception with a clear message, never a
crash, a hang, or a large allocation."""

from __future__ import annotations

import gzip
import os
import resource
import struct
import tarfile
import zlib

import pytest
from crafted import honest_member
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsbackup._ext.checksum import crc32, crc32_combine, xxh3_64
from dsbackup._ext.compress import deflate_body, tar_header
from dsbackup.archive import format as fmt
from dsbackup.archive.index import ENTRY_SIZE, HEADER_SIZE, Index
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.salvage import salvage
from dsbackup.archive.verify import verify_archive
from dsbackup.errors import ArchiveError, DsBackupError, IntegrityError


def member(sub: bytes, name: bytes, size: int, deflate: bytes, crc: int, isize: int) -> bytes:
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + tar_header(name, size, 0) + deflate
            + fmt.member_tail(crc, isize))


def assemble(path, chunk_members: list[tuple[bytes, dict]], manifest: bytes | None = None):
    """Write an archive from raw chunk members with an index that matches them (so only the
    member contents are hostile)."""
    from dsbackup.archive.index import ChunkEntry, IndexBuilder

    manifest = manifest or b'{"format": "dsbackup", "version": 1}'
    out = bytearray(honest_member(manifest, fmt.TYPE_MANIFEST, fmt.MANIFEST_NAME))
    mlen = len(out)
    ib = IndexBuilder()
    for seq, (raw, info) in enumerate(chunk_members):
        ib.add_chunk(ChunkEntry(seq, len(out), len(raw), info.get("payload_len", 0),
                                info.get("records", 1), info.get("pxxh", 0), xxh3_64(raw),
                                0, b"/a%d" % seq, b"/a%d" % seq))
        out += raw
    idx = ib.encode(mlen, xxh3_64(bytes(out[:mlen])))
    ioff = len(out)
    im = honest_member(idx, fmt.TYPE_INDEX, fmt.INDEX_NAME)
    out += im
    soff = len(out)
    sm = honest_member(b"{}", fmt.TYPE_SUMMARY, fmt.SUMMARY_NAME)
    out += sm
    t = fmt.Trailer(ioff, len(im), xxh3_64(im), soff, len(sm), xxh3_64(sm), len(chunk_members),
                    len(out))
    out += t.encode()
    path.write_bytes(bytes(out))
    return path


def payload(records: list[tuple[bytes, bytes]]) -> bytes:
    from dsbackup._ext.framing import encode_records
    return encode_records([k for k, _ in records], [v for _, v in records])


def expect_integrity(path, *needles: str) -> str:
    with pytest.raises(DsBackupError) as ei, ArchiveReader(path) as r:
        for i in range(r.chunk_count):
            r.read_chunk(i)
        _ = r.manifest
        _ = r.summary
    msg = str(ei.value)
    for n in needles:
        assert n in msg, msg
    report = verify_archive(path)
    assert not report.ok
    return msg


@pytest.fixture
def rss_guard():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


def test_inflate_bomb_is_capped(tmp_path, rss_guard):
    # 64 MiB of zeros compresses ~1000:1; the member declares 100 bytes
    big = bytes(64 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate = c.compress(big) + c.flush()
    sub = fmt.chunk_subfield(0, 1, 100, 0)
    raw = member(sub, fmt.chunk_name(0), 100, deflate, 0, 0)
    path = assemble(tmp_path / "bomb.tar.gz", [(raw, {"payload_len": 100})])
    expect_integrity(path, "chunk 0")


def test_declared_size_impossible_for_compressed_length(tmp_path, rss_guard):
    sub = fmt.chunk_subfield(0, 1, 1 << 40, 0)
    raw = member(sub, fmt.chunk_name(0), 0, b"\x01\x00\x00\xff\xff", 0, 0)
    path = assemble(tmp_path / "lie.tar.gz", [(raw, {"payload_len": 1 << 40})])
    expect_integrity(path, "impossible")


def test_declared_size_smaller_than_data(tmp_path):
    p = payload([(b"/a", b"x" * 5000)])
    raw = honest_member(p, fmt.TYPE_CHUNK, fmt.chunk_name(0), seq=0)
    # rewrite the subfield to declare fewer bytes (with a valid subfield check)
    sub = fmt.chunk_subfield(0, 1, 100, xxh3_64(p))
    raw = fmt.member_head(sub) + raw[fmt.SUBFIELD_OFFSET + fmt.CHUNK_SUBLEN:]
    path = assemble(tmp_path / "short.tar.gz", [(raw, {"payload_len": 100})])
    expect_integrity(path, "chunk 0")


def test_index_offsets_past_the_end(tmp_path, make_archive):
    path = tmp_path / "a.tar.gz"
    make_archive(path, [(b"/a", b"1"), (b"/b", b"2")], chunk_size=1)
    data = bytearray(path.read_bytes())
    t = fmt.Trailer.decode(bytes(data[-fmt.TRAILER_SIZE:]), len(data))
    with ArchiveReader(path) as r:
        idx = bytearray(r.index._data)
    struct.pack_into("<Q", idx, HEADER_SIZE + 8, len(data) * 10)  # chunk 0 offset
    im = honest_member(bytes(idx), fmt.TYPE_INDEX, fmt.INDEX_NAME)
    head = bytes(data[: t.index_offset])
    sm = bytes(data[t.summary_offset : t.trailer_offset])
    soff = len(head) + len(im)
    nt = fmt.Trailer(len(head), len(im), xxh3_64(im), soff, len(sm), xxh3_64(sm),
                     t.chunk_count, soff + len(sm))
    path.write_bytes(head + im + sm + nt.encode())
    msg = expect_integrity(path, "chunk 0")
    assert "outside" in msg


def test_index_entry_count_lies(tmp_path, make_archive):
    path = tmp_path / "a.tar.gz"
    make_archive(path, [(b"/a", b"1")])
    with ArchiveReader(path) as r:
        idx = bytearray(r.index._data)
    struct.pack_into("<Q", idx, 8, 10**12)
    with pytest.raises(IntegrityError, match="index"):
        Index(bytes(idx))
    assert ENTRY_SIZE == 88


@pytest.mark.parametrize("content", [b"", b"x", b"\x1f\x8b", os.urandom(5000),
                                     gzip.compress(b"hello" * 1000)],
                         ids=["empty", "one-byte", "gzip-magic", "garbage", "plain-gzip"])
def test_garbage_and_missing_trailer(tmp_path, content):
    path = tmp_path / "g.tar.gz"
    path.write_bytes(content)
    with pytest.raises((IntegrityError, ArchiveError)) as ei:
        ArchiveReader(path)
    assert str(path) in str(ei.value)
    assert not verify_archive(path).ok
    salvage(path)  # never raises on damage


def test_failed_open_never_closes_a_reused_descriptor(tmp_path):
    """A reader whose constructor failed closed its file; finalizing it later must not close
    the same descriptor number again once another file has been given it."""
    import gc

    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not an archive at all" * 100)
    try:
        ArchiveReader(bad)
    except ArchiveError as exc:
        failed = exc  # the traceback keeps the half-built reader alive
    other = os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT)
    try:
        del failed
        gc.collect()
        assert os.write(other, b"still open") == 10
    finally:
        os.close(other)


def test_appended_member_is_rejected(tmp_path, make_archive):
    path = tmp_path / "a.tar.gz"
    make_archive(path, [(b"/a", b"1")])
    with open(path, "ab") as f:
        f.write(gzip.compress(b"appended"))
    msg = expect_integrity(path, "trailer")
    assert "appended" in msg or "not a dsbackup trailer" in msg


def test_tar_entry_with_dotdot_name(tmp_path):
    p = payload([(b"/a", b"1")])
    evil = b"../../etc/passwd"
    body = deflate_body(p, 1)
    hdr = tar_header(evil, len(p), 0)
    crc = crc32_combine(crc32(hdr), body.crc32, body.size)
    sub = fmt.chunk_subfield(0, 1, len(p), xxh3_64(p))
    raw = (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + body.data
           + fmt.member_tail(crc, 512 + body.size))
    path = assemble(tmp_path / "evil.tar.gz", [(raw, {"payload_len": len(p),
                                                       "pxxh": xxh3_64(p)})])
    expect_integrity(path, "../../etc/passwd")
    assert not (tmp_path / "etc").exists()
    # the container is still a valid tar.gz that tools can list (we never extract it)
    with tarfile.open(path) as t:
        assert evil.decode() in t.getnames()


def test_manifest_not_json(tmp_path):
    p = payload([(b"/a", b"1")])
    raw = honest_member(p, fmt.TYPE_CHUNK, fmt.chunk_name(0), seq=0)
    path = assemble(tmp_path / "m.tar.gz", [(raw, {"payload_len": len(p),
                                                    "pxxh": xxh3_64(p)})],
                    manifest=b"\xff not json")
    with pytest.raises(IntegrityError, match="manifest"):
        _ = ArchiveReader(path).manifest


_small = None


def _small_archive(tmp_path_factory, make_archive) -> bytes:
    global _small
    if _small is None:
        p = tmp_path_factory.mktemp("fuzz") / "s.tar.gz"
        make_archive(p, [(b"/a", b"alpha"), (b"/b", b"beta" * 30), (b"/c", b"")], chunk_size=2,
                     catalog=True)
        _small = p.read_bytes()
    return _small


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_archives(tmp_path_factory, make_archive, data):
    base = bytearray(_small_archive(tmp_path_factory, make_archive))
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete",
                                                        "truncate"]),
                                       st.integers(0, len(base) - 1), st.integers(0, 255)),
                             min_size=1, max_size=4))
    for op, pos, val in ops:
        pos %= max(1, len(base))
        if op == "flip" and base:
            base[pos] ^= 1 << (val % 8)
        elif op == "set" and base:
            base[pos] = val
        elif op == "insert":
            base[pos:pos] = bytes([val]) * (val % 7 + 1)
        elif op == "delete":
            del base[pos : pos + val % 9 + 1]
        elif op == "truncate":
            del base[pos:]
    path = tmp_path_factory.mktemp("f") / "m.tar.gz"
    path.write_bytes(bytes(base))
    report = verify_archive(path, threads=1)  # never raises
    if bytes(base) != _small:
        assert not report.ok
    salvage(path)
    try:
        with ArchiveReader(path) as r:
            for i in range(r.chunk_count):
                r.read_chunk(i)
    except DsBackupError:
        pass



def _with_manifest(path, manifest: bytes) -> None:
    """Replace a paged archive's manifest member (every offset after it moved, every checksum
    right): only the manifest's content is hostile. benchmarks/fuzzlib does the re-layout."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from fuzzlib import model

    a = model.parse(path.read_bytes())
    m = a.find(fmt.TYPE_MANIFEST)
    m.data, m.dirty = manifest, True
    path.write_bytes(model.serialize(a))


@pytest.mark.parametrize("manifest", [b'{"format": "dsbackup", "x": "' + b"x" * (17 << 20) + b'"}',
                                      b"not json" * 300000],
                         ids=["over-16-MiB", "not-json"])
def test_a_bad_manifest_is_read_once_not_per_chunk(tmp_path, monkeypatch, manifest,
                                                   rss_guard):
    """Found by benchmarks/fuzz_archives.py: every chunk a verify read asked whether the
    archive is incremental, which read the manifest again: a 17 MiB manifest (over the 16 MiB
    limit, refused only after it was inflated) was inflated once per chunk and each failure,
    kept in the report, held its buffers: 1.9 GB and 13 s for 560 chunks. The limit is now
    checked from the subfield before inflating, and a manifest that fails is read once."""
    import time

    from dsbackup.archive import member
    from dsbackup.datastores import open_datastore
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    ds.put_many([b"/k%04d" % i for i in range(600)], [b"v"] * 600)
    mgr = BackupManager(BackupConfig(chunk_size=1, workers=1, paged_index="always"))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    ds.put(b"/k0300", b"changed")
    path = tmp_path / "a.tar.gz"  # an incremental: its references make each read ask
    mgr.create_backup(ds, path, parent=tmp_path / "p.tar.gz")
    ds.close()
    _with_manifest(path, manifest)
    inflated = []
    real = member._inflate_exactly

    def counting(deflate, declared, *a):
        inflated.append(declared)
        return real(deflate, declared, *a)

    member._inflate_exactly = counting
    try:
        t0 = time.monotonic()
        report = verify_archive(path, threads=2)
        took = time.monotonic() - t0
    finally:
        member._inflate_exactly = real
    assert not report.ok
    assert any("manifest" in e for e in report.errors)
    big = [d for d in inflated if d > 1 << 20]
    assert len(big) <= 1, f"the manifest was inflated {len(big)} times"
    assert took < 30
