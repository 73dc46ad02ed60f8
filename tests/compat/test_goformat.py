"""Reading archives of the Go tool (gosuda/boxo-starter-kit pkg/backup), written here as Go does."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from pathlib import Path

import pytest
from go_archives import Record, go_archive, go_chunk, tar_bytes, write_gz

from dsbackup.compat.goformat import is_go_archive, iter_go_records, read_go_metadata
from dsbackup.errors import ArchiveError, IntegrityError


def read_all(path: Path, **kwargs: object) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for keys, values in iter_go_records(path, **kwargs):  # type: ignore[arg-type]
        assert len(keys) == len(values)
        out.extend(zip(keys, values))
    return out


RECORDS: list[Record] = [
    ("/blocks/CIQB", b"\x00\x01\x02" * 50),
    ("/pins/<a>&b", b"html chars"),
    ("/blocks/CIQA", b""),
    ("/local/filesroot", None),
    ("/peers/keys/\u00e9t\u00e9", bytes(range(256))),
    ("/a", b"x"),
    ("/blocks/CIQC", b"\xff" * 1000),
    ("/z\u2028line", b"sep"),
    ("/blocks/CIQD", b"d"),
    ("/b", b"bee"),
]


def expected_map(records: list[Record]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in records:
        out[key.encode()] = value or b""
    return out


def test_go_archive_with_duplicate_member_names(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    members = go_archive(path, RECORDS, chunk_size=4)
    # the Go naming bug: the final partial chunk repeats the previous chunk's name
    assert [name for name, _ in members] == [
        "chunk_1.chunk", "chunk_2.chunk", "chunk_2.chunk", "metadata.json"]
    records = read_all(path)
    keys = [k for k, _ in records]
    assert keys == sorted(set(keys))
    assert dict(records) == expected_map(RECORDS)
    assert is_go_archive(path)


def test_key_in_several_chunks_last_occurrence_wins(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    records: list[Record] = [("/k1", b"old"), ("/k2", b"2"), ("/k3", b"3"),
                             ("/k4", b"4"), ("/k1", b"middle"), ("/k5", b"5"),
                             ("/k6", b"6"), ("/k1", b"new"), ("/k2", None)]
    members = go_archive(path, records, chunk_size=3)
    assert [n for n, _ in members][:3] == ["chunk_1.chunk", "chunk_2.chunk", "chunk_3.chunk"]
    result = dict(read_all(path))
    assert result == {b"/k1": b"new", b"/k2": b"", b"/k3": b"3", b"/k4": b"4",
                      b"/k5": b"5", b"/k6": b"6"}


def test_random_store_many_chunks(tmp_path: Path) -> None:
    rng = random.Random(7)
    keys = [f"/blocks/{rng.getrandbits(64):016X}" for _ in range(400)]
    records: list[Record] = [(rng.choice(keys), rng.randbytes(rng.randrange(0, 300)))
                             for _ in range(2000)]
    path = tmp_path / "go.tar.gz"
    members = go_archive(path, records, chunk_size=97)
    assert len({n for n, _ in members}) < len(members)  # duplicate names present
    records_read = read_all(path, batch_records=50)
    assert dict(records_read) == expected_map(records)
    assert [k for k, _ in records_read] == sorted(expected_map(records))


def test_batches_respect_record_and_byte_limits(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    records: list[Record] = [(f"/k{i:03d}", bytes(100)) for i in range(25)]
    go_archive(path, records, chunk_size=10)
    sizes = [len(k) for k, _ in iter_go_records(path, batch_records=7)]
    assert sizes == [7, 7, 7, 4]
    sizes = [len(k) for k, _ in iter_go_records(path, batch_bytes=250)]
    assert sizes == [3] * 8 + [1]


def test_metadata_read_and_returned(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    go_archive(path, RECORDS, chunk_size=4)
    meta = read_go_metadata(path)
    assert meta["version"] == "1.0"
    assert meta["total_keys"] == len(RECORDS)
    assert meta["config"]["ChunkSize"] == 4
    out: dict[str, object] = {}
    read_all(path, metadata_out=out)
    assert out == meta


def test_empty_datastore_archive(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    members = go_archive(path, [], chunk_size=1000)
    assert [n for n, _ in members] == ["metadata.json"]
    assert is_go_archive(path)
    assert read_all(path) == []
    assert read_go_metadata(path)["total_keys"] == 0


def test_keys_cleaned_like_go_newkey_and_lenient_base64(tmp_path: Path) -> None:
    body = (b'{"a/b":"QQ==","/x/../y":"QUJD","/z/":"QR==","/n":"QU\\nJD",'
            b'"/s\\ud800":null,"":"Qg=="}')
    path = write_gz(tmp_path / "go.tar.gz", tar_bytes([("chunk_0.chunk", body)]))
    result = dict(read_all(path, require_metadata=False))
    assert result == {b"/a/b": b"A", b"/y": b"ABC", b"/z": b"A", b"/n": b"ABC",
                      "/s\ufffd".encode(): b"", b"/": b"B"}


def test_unknown_members_and_chunk_directories_ignored(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in [("chunk_1.chunk", go_chunk({"/a": b"1"})), ("notes.txt", b"{bad")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("old.chunk")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
    path = write_gz(tmp_path / "go.tar.gz", buf.getvalue())
    assert read_all(path, require_metadata=False) == [(b"/a", b"1")]


def test_multi_member_gzip_is_read_like_go(tmp_path: Path) -> None:
    payload = tar_bytes([("chunk_0.chunk", go_chunk({"/a": b"1", "/b": b"2"})),
                         ("metadata.json", b'{"total_keys":2,"total_size":2}')])
    path = tmp_path / "go.tar.gz"
    path.write_bytes(gzip.compress(payload[:1024]) + gzip.compress(payload[1024:]))
    assert read_all(path) == [(b"/a", b"1"), (b"/b", b"2")]


def test_spool_lives_in_tmp_dir_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    go_archive(path, RECORDS, chunk_size=4)
    spool = tmp_path / "spool"
    spool.mkdir()
    batches = iter_go_records(path, tmp_dir=spool, batch_records=2)
    next(batches)
    assert len(list(spool.iterdir())) == 1
    batches.close()
    assert list(spool.iterdir()) == []


# ---------------------------------------------------------------- sniffing


def test_sniff_rejects_dsbackup_and_other_files(tmp_path: Path) -> None:
    ds = write_gz(tmp_path / "ds.tar.gz", tar_bytes([("dsbackup/manifest.json", b"{}"),
                                                     ("chunk_1.chunk", b"{}")]))
    assert not is_go_archive(ds)
    other = write_gz(tmp_path / "other.tar.gz", tar_bytes([("readme.txt", b"hi")]))
    assert not is_go_archive(other)
    not_tar = write_gz(tmp_path / "plain.gz", b"just some text, not a tar stream" * 40)
    assert not is_go_archive(not_tar)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"PK\x03\x04 not gzip")
    assert not is_go_archive(raw)
    assert not is_go_archive(tmp_path / "missing.tar.gz")
    assert not is_go_archive(tmp_path)


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"/a":', "bad JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"/a":"QQ"}', "bad base64"),
        (b'{"/a":"Q Q=="}', "bad base64"),
        (b'{"/a":"QQ==QQ=="}', "bad base64"),
        (b'{"/a":"\xc3\xa9AAA"}', "bad base64"),
        (b'{"/a":5}', "not a base64 string"),
        (b'{"/a":{"x":"QQ=="}}', "not a base64 string"),
        pytest.param(b"[" * 200_000, "bad JSON", id="deep-nesting"),
    ],
)
def test_bad_chunk_content(tmp_path: Path, body: bytes, message: str) -> None:
    members = [("chunk_1.chunk", go_chunk({"/ok": b"1"})), ("chunk_2.chunk", body)]
    path = write_gz(tmp_path / "go.tar.gz", tar_bytes(members))
    with pytest.raises(IntegrityError, match=message) as info:
        read_all(path, require_metadata=False)
    assert "chunk_2.chunk" in str(info.value)


def test_member_over_size_limit(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "go.tar.gz",
                    tar_bytes([("chunk_0.chunk", go_chunk({"/a": bytes(300)}))]))
    with pytest.raises(IntegrityError, match=r"'chunk_0.chunk' is \d+ bytes, over the limit"):
        read_all(path, max_member_bytes=100)


def test_huge_declared_member_fails_before_reading(tmp_path: Path) -> None:
    info = tarfile.TarInfo("chunk_1.chunk")
    info.size = 5 << 30
    path = write_gz(tmp_path / "go.tar.gz", info.tobuf(tarfile.GNU_FORMAT) + b"{}" * 100)
    with pytest.raises(IntegrityError, match="over the limit of 1073741824 bytes"):
        read_all(path)


def test_huge_pax_header_rejected(tmp_path: Path) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 100 << 20
    path = write_gz(tmp_path / "go.tar.gz",
                    tar_bytes([("chunk_1.chunk", b"{}")])[:1024] + info.tobuf() + bytes(4096))
    with pytest.raises(IntegrityError, match="extended header"):
        read_all(path)


@pytest.mark.parametrize("name", ["../evil.chunk", "/abs/chunk_1.chunk", "a/../../metadata.json"])
def test_unsafe_member_names_rejected_never_extracted(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = write_gz(work / "go.tar.gz", tar_bytes([(name, go_chunk({"/a": b"1"}))]))
    with pytest.raises(IntegrityError, match="unsafe path") as info:
        read_all(path, require_metadata=False)
    assert repr(name) in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["go.tar.gz", "work"]


def test_symlink_chunk_member_rejected(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        link = tarfile.TarInfo("chunk_1.chunk")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    path = write_gz(tmp_path / "go.tar.gz", buf.getvalue())
    with pytest.raises(IntegrityError, match="'chunk_1.chunk' is not a regular file"):
        read_all(path)


def test_truncated_archive(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    go_archive(path, [(f"/k{i}", bytes([i]) * 500) for i in range(100)], chunk_size=10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="damaged archive after member"):
        read_all(path)


def test_missing_metadata(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    go_archive(path, RECORDS, chunk_size=4, metadata=False)
    with pytest.raises(IntegrityError, match="no metadata.json"):
        read_all(path)
    assert dict(read_all(path, require_metadata=False)) == expected_map(RECORDS)
    assert read_go_metadata(path) == {}


@pytest.mark.parametrize("change", ["drop_first", "drop_last_chunk", "swap", "append"])
def test_chunk_set_checked_against_metadata(tmp_path: Path, change: str) -> None:
    path = tmp_path / "go.tar.gz"
    members = go_archive(path, RECORDS, chunk_size=4)
    chunks, meta = members[:-1], members[-1]
    if change == "drop_first":
        chunks = chunks[1:]
    elif change == "drop_last_chunk":
        chunks = chunks[:-1]
    elif change == "swap":
        chunks = [chunks[1], chunks[0], chunks[2]]
    else:
        chunks = [*chunks, ("chunk_3.chunk", go_chunk({"/extra": b""}))]
    write_gz(path, tar_bytes([*chunks, meta]))
    with pytest.raises(IntegrityError, match="implies 3 chunk members"):
        read_all(path)
    assert read_all(path, check_totals=False)


def test_totals_checked_without_chunk_size(tmp_path: Path) -> None:
    members = [("chunk_1.chunk", go_chunk({"/a": b"12", "/b": b"3"}))]
    for meta, message in [(b'{"total_keys":1,"total_size":3}', "the chunks hold more: 2"),
                          (b'{"total_keys":2,"total_size":4}', "hold 3 bytes of values"),
                          (b'{"total_keys":2,"total_size":2}', "the chunks hold more: 3")]:
        path = write_gz(tmp_path / "go.tar.gz", tar_bytes([*members, ("metadata.json", meta)]))
        with pytest.raises(IntegrityError, match=message):
            read_all(path)
    # the Go writer counts a key its query returned twice in one chunk; the JSON map keeps one
    path = write_gz(tmp_path / "go.tar.gz", tar_bytes(
        [*members, ("metadata.json", b'{"total_keys":3,"total_size":5}')]))
    assert read_all(path) == [(b"/a", b"12"), (b"/b", b"3")]


@pytest.mark.parametrize("total_keys", [10 ** 100, 2 * 10 ** 6])
def test_huge_declared_total_keys_is_refused_in_bounded_memory(tmp_path: Path,
                                                               total_keys: int) -> None:
    """A hostile metadata.json claiming many records in chunks of 1: the expected member
    names were built as lists of that size (10**100: OverflowError, not the package's error;
    2 * 10**6: ~70 MB of Python ints, 10**9 would take the machine's memory)."""
    import tracemalloc

    meta = b'{"total_keys":%d,"total_size":1,"config":{"ChunkSize":1}}' % total_keys
    path = write_gz(tmp_path / "go.tar.gz", tar_bytes(
        [("chunk_1.chunk", go_chunk({"/a": b"1"})), ("metadata.json", meta)]))
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match=f"implies {total_keys} chunk members"):
            read_all(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize("metadata", [b"[]", b"{bad", b'{"total_keys":"10"}',
                                      b'{"total_keys":1.5}', b'{"version":true}'])
def test_bad_metadata(tmp_path: Path, metadata: bytes) -> None:
    path = write_gz(tmp_path / "go.tar.gz", tar_bytes([("metadata.json", metadata)]))
    with pytest.raises(IntegrityError, match="'metadata.json'"):
        read_go_metadata(path)


def test_corrupt_header_mid_archive_is_not_a_silent_end(tmp_path: Path) -> None:
    payload = bytearray(tar_bytes([("chunk_1.chunk", go_chunk({"/a": b"1"})),
                                   ("chunk_2.chunk", go_chunk({"/b": b"2"})),
                                   ("metadata.json", b"{}")]))
    payload[1024 + 3] ^= 0x20  # second header's name: checksum no longer matches
    path = write_gz(tmp_path / "go.tar.gz", bytes(payload))
    with pytest.raises(IntegrityError, match="bad tar header"):
        read_all(path)


def test_data_after_tar_end(tmp_path: Path) -> None:
    payload = tar_bytes([("metadata.json", b"{}")]) + b"hidden data"
    path = write_gz(tmp_path / "go.tar.gz", payload)
    with pytest.raises(IntegrityError, match="after the end of the tar archive"):
        read_all(path)


def test_gzip_crc_checked(tmp_path: Path) -> None:
    path = tmp_path / "go.tar.gz"
    go_archive(path, RECORDS, chunk_size=4)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01  # stored CRC-32
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="CRC"):
        read_all(path)


def test_not_gzip_or_missing_is_archive_error(tmp_path: Path) -> None:
    raw = tmp_path / "x.tar"
    raw.write_bytes(tar_bytes([("chunk_0.chunk", b"{}")]))
    for target in (raw, tmp_path / "missing.tar.gz", tmp_path):
        with pytest.raises(ArchiveError) as info:
            read_all(target)
        assert type(info.value) is ArchiveError
