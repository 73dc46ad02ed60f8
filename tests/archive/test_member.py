"""Decoding members without an index (docs/FORMAT.md §2): decode_member_at finds a member's
end and checks it in one inflate, as decode_member and member_end do together."""

from __future__ import annotations

import pytest

from dsbackup import datasets
from dsbackup.archive import format as fmt
from dsbackup.archive.member import decode_member, decode_member_at, member_end
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import IntegrityError


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(3000))
    out = tmp_path / "a.tar.gz"
    BackupManager(BackupConfig(chunk_size=100, include_metadata=True)).create_backup(
        f"lmdb:{src}", out)
    return out


def test_decode_member_at_agrees_with_decode_member(archive):
    data = archive.read_bytes()
    mv = memoryview(data)
    with ArchiveReader(archive) as r:
        entries = [(r.index.entry(i), r.index.catalog(i)) for i in range(r.chunk_count)]
    assert len(entries) > 5
    for i, (e, c) in enumerate(entries):
        for kind, off, length, name in ((fmt.TYPE_CHUNK, e.offset, e.length, fmt.chunk_name(i)),
                                        (fmt.TYPE_CATALOG, c.offset, c.length,
                                         fmt.catalog_name(i))):
            sub, got, end = decode_member_at(mv, off, "m", expected_type=kind,
                                             expected_name=name, version=1, flags=0)
            want_sub, want = decode_member(mv[off:off + length], "m", expected_type=kind,
                                           expected_name=name)
            assert end == off + length == member_end(mv, off)[1]
            assert (sub, bytes(got)) == (want_sub, bytes(want))


def test_decode_member_at_refuses_a_torn_or_damaged_member(archive):
    with ArchiveReader(archive) as r:
        e = r.index.entry(2)
    data = archive.read_bytes()
    torn = memoryview(data[:e.offset + e.length - 3])
    with pytest.raises(IntegrityError, match="truncated|cannot inflate"):
        decode_member_at(torn, e.offset, "m", expected_type=fmt.TYPE_CHUNK,
                         expected_name=fmt.chunk_name(2))
    bad = bytearray(data)
    bad[e.offset + e.length - 6] ^= 1  # the CRC-32
    with pytest.raises(IntegrityError, match="CRC-32"):
        decode_member_at(memoryview(bytes(bad)), e.offset, "m", expected_type=fmt.TYPE_CHUNK,
                         expected_name=fmt.chunk_name(2))
    with pytest.raises(IntegrityError, match="expected catalog"):
        decode_member_at(memoryview(data), e.offset, "m", expected_type=fmt.TYPE_CATALOG,
                         expected_name=None)
