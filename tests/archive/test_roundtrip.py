"""Round trips through the archive writer and reader, and the container's compatibility."""

from __future__ import annotations

import gzip
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsbackup._ext.framing import decode_records
from dsbackup.archive import format as fmt
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive


def read_all(path) -> list[tuple[bytes, bytes]]:
    out = []
    with ArchiveReader(path) as r:
        for i in range(r.chunk_count):
            keys, values = decode_records(r.read_chunk(i))
            out += list(zip(keys, values))
    return out


def check_tools(path) -> None:
    assert subprocess.run(["gzip", "-t", str(path)]).returncode == 0
    listing = subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = listing.stdout.split()
    assert names[0] == "dsbackup/manifest.json"
    assert names[-2:] == ["dsbackup/index", "dsbackup/summary.json"]
    with tarfile.open(path) as t:
        assert t.getnames() == names
    raw = gzip.decompress(path.read_bytes())
    assert raw.endswith(bytes(1024))


records_strategy = st.dictionaries(
    st.binary(min_size=1, max_size=40), st.binary(max_size=300), max_size=60
).map(lambda d: sorted(d.items()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=records_strategy, chunk_size=st.integers(1, 8), level=st.sampled_from([0, 1, 3, 6]))
def test_roundtrip_generated(tmp_path_factory, make_archive, records, chunk_size, level):
    path = tmp_path_factory.mktemp("rt") / "a.tar.gz"
    written = make_archive(path, records, chunk_size=chunk_size, level=level,
                           chunk_max_bytes=4096)
    assert read_all(path) == records
    assert written.records == len(records)
    report = verify_archive(path, deep=True, threads=2)
    assert report.ok, report.errors
    assert report.records == len(records)


@pytest.mark.parametrize("records", [
    [],
    [(b"/only", b"")],
    [(b"\x00", b"\xff" * 10), (b"\xff\xff", b"")],
    [(b"/big", b"\x07" * (16 << 20)), (b"/small", b"x")],
], ids=["empty", "one-empty-value", "binary-keys", "16MiB-value"])
def test_roundtrip_edge_cases(tmp_path, make_archive, records):
    path = tmp_path / "a.tar.gz"
    make_archive(path, records)
    assert read_all(path) == records
    check_tools(path)
    assert verify_archive(path).ok


def test_catalog_roundtrip(tmp_path, make_archive):
    from dsbackup._ext.checksum import xxh3_64
    from dsbackup.archive.listing import iter_listing

    records = [(b"/k/%04d" % i, b"v" * (i % 50)) for i in range(500)]
    path = tmp_path / "c.tar.gz"
    make_archive(path, records, catalog=True, chunk_size=16)
    check_tools(path)
    with ArchiveReader(path) as r:
        assert r.index.catalog_count == r.chunk_count > 1
        rows = list(iter_listing(r))
        assert rows == [(k, len(v), xxh3_64(v)) for k, v in records]
        sub = list(iter_listing(r, b"/k/0100", b"/k/0200"))
        assert [k for k, _, _ in sub] == [k for k, _ in records[100:200]]
    assert verify_archive(path).ok


def test_trailer_is_fixed_size_and_locates_index(tmp_path, make_archive):
    path = tmp_path / "a.tar.gz"
    make_archive(path, [(b"/a", b"1"), (b"/b", b"2")])
    data = path.read_bytes()
    t = fmt.Trailer.decode(data[-fmt.TRAILER_SIZE:], len(data))
    assert t.trailer_offset == len(data) - 1129
    assert data[t.index_offset : t.index_offset + 2] == b"\x1f\x8b"


def test_open_is_constant_time_in_chunks(tmp_path, make_archive):
    """Opening reads the trailer and the index only (no chunk member)."""
    path = tmp_path / "a.tar.gz"
    make_archive(path, [(b"/k%05d" % i, b"x" * 100) for i in range(3000)], chunk_size=3)
    with ArchiveReader(path) as r:
        assert r.chunk_count > 500
        reads = []
        orig = r.pread
        r.pread = lambda off, n: reads.append((off, n)) or orig(off, n)
        r.entry(r.chunk_count - 1)
        assert reads == []  # index entries come from memory


def test_chunks_overlapping_agrees_with_a_scan_of_every_entry(tmp_path, make_archive):
    records = [(b"/k/%05d" % i, b"v") for i in range(0, 2000, 3)]
    path = tmp_path / "a.tar.gz"
    make_archive(path, records, chunk_size=4, chunk_max_bytes=4096)
    with ArchiveReader(path) as r:
        entries = [r.entry(i) for i in range(r.chunk_count)]
        assert len(entries) > 50
        bounds = [b"", b"/k/", b"/k/00000", b"/k/00001", b"/k/00999", b"/k/01000", b"/k/1",
                  b"/z"] + [e.first_key for e in entries[::7]] + [e.last_key for e in entries[::5]]
        for start in bounds:
            for end in [None, *bounds]:
                want = [i for i, e in enumerate(entries)
                        if e.last_key >= start and (end is None or e.first_key < end)]
                assert list(r.index.chunks_overlapping(start, end)) == want, (start, end)


def test_a_rejected_manifest_leaves_no_temp_file(tmp_path):
    from dsbackup.archive.format import MAX_JSON_BYTES
    from dsbackup.archive.writer import ArchiveWriter
    from dsbackup.errors import ArchiveError

    with pytest.raises(ArchiveError, match="manifest too large"):
        ArchiveWriter(tmp_path / "a.tar.gz", manifest={"x": "y" * MAX_JSON_BYTES})
    assert list(tmp_path.iterdir()) == []
