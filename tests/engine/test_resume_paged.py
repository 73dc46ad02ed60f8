"""backup --resume of an archive with a paged index (docs/FORMAT.md §11.3, §11.5): the dead
writer's file is cut after its last whole index page whose data equals the page rebuilt from
the kept chunks, and goes on from the next chunk. Pages of 256 chunks
(DSBACKUP_TEST_PAGE_ENTRIES); the dead writer's file is a prefix of a finished archive."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup._ext.checksum import xxh3_64
from dsbackup.archive import crypto
from dsbackup.archive.crypto import KeyMaterial
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import ArchiveError
from dsbackup.storage import resumestate
from tests.support.deadwriter import dead_writer_file

PAGE = 256
KEY = KeyMaterial(key=b"p" * 32)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", str(PAGE))
    monkeypatch.setenv(crypto.TEST_LOG2_N_ENV, "14")
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(12000))
    return src


def contents(uri: str) -> list[tuple[bytes, bytes]]:
    out = []
    with open_datastore(uri, readonly=True) as ds:
        for keys, values in ds.scan_batches():
            out += list(zip(keys, values))
    return out


def backup(store, final, **cfg):
    c = dict(chunk_size=15, workers=2, paged_index="always")
    c.update(cfg)
    return BackupManager(BackupConfig(**c)).create_backup(f"lmdb:{store}", final)


def killed_copy(data: bytes, final: Path, sealed: bool) -> Path:
    return dead_writer_file(final, data, sealing=resumestate.WRITING if sealed else None)


def cut(archive: Path, chunk: int, extra: int, key=None) -> bytes:
    """The archive's bytes up to the member of chunk `chunk` (its start), plus `extra`."""
    with ArchiveReader(archive, key=key) as r:
        assert r.paged and r.chunk_count > 2 * PAGE
        off = r.index.entry(chunk).offset
    return archive.read_bytes()[:off + extra]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("chunk,extra,from_seq", [
    (PAGE + 40, 300, PAGE),  # page 0 whole, 40 chunks after it and a torn one: back to 256
    (2 * PAGE, 0, 2 * PAGE),  # right after page 1 (the next chunk not begun)
    (2 * PAGE, -5, PAGE),  # page 1 torn: back to page 0
    (100, 0, 0),  # no page yet: everything again
])
def test_killed_paged_backup_resumes_from_its_last_page(tmp_path, store, encrypted, chunk,
                                                        extra, from_seq):
    key = KEY if encrypted else None
    full = tmp_path / "full.tar.gz"
    backup(store, full, encryption=key, include_metadata=True)
    final = tmp_path / "a.tar.gz"
    killed_copy(cut(full, chunk, extra, key), final, encrypted)
    meta = backup(store, final, encryption=key, include_metadata=True, resume=True)
    assert meta.total_keys == 12000
    mgr = BackupManager()
    report = mgr.verify_backup(final, deep=True, key=key)
    assert report.ok, report.errors
    with ArchiveReader(final, key=key) as r, ArchiveReader(full, key=key) as f:
        assert r.paged and r.summary["resumed"][0]["from_seq"] == from_seq
        assert r.summary["fingerprint"] == f.summary["fingerprint"]  # the same chunks
        assert r.index.page_count == f.index.page_count
        epochs = [e.epoch for e in r.index.entries()]
        assert [e.first_key for e in r.index.entries()] == [e.first_key
                                                            for e in f.index.entries()]
    if encrypted:
        assert epochs == [0] * from_seq + [1] * (len(epochs) - from_seq)
    else:
        assert set(epochs) == {0}
    dst = tmp_path / "dst"
    mgr.restore_backup(final, f"lmdb:{dst}", key=key)
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{store}")


def page_member(data: bytes, number: int, version: int, flags: int) -> bytes:
    """A whole, self-consistent index page member holding `data` (as the writer makes one)."""
    from dsbackup._ext.checksum import crc32, crc32_combine, xxh3_64
    from dsbackup._ext.compress import deflate_body, tar_header
    from dsbackup.archive import format as fmt

    body = deflate_body(data, 0)
    header = tar_header(fmt.page_name(number), body.input_len, 0)
    sub = fmt.data_subfield(fmt.TYPE_PAGE, len(data), xxh3_64(data), version, flags)
    crc = crc32_combine(crc32(header), body.crc32, body.size)
    return b"".join((fmt.member_head(sub), fmt.STORED_TAR_PREFIX, header, bytes(body.data),
                     fmt.member_tail(crc, fmt.TAR_BLOCK + body.size)))


@pytest.mark.parametrize("damage,from_seq", [
    ("flipped byte", PAGE), ("other entries", PAGE),
    ("none", 2 * PAGE),  # the control: the same page, made again, is kept
])
def test_a_page_that_is_damaged_or_disagrees_with_its_chunks_is_cut(tmp_path, store, damage,
                                                                   from_seq):
    """A page member that fails its checks, or a whole one whose data is not the page of the
    chunks kept before it, is not kept, nor anything after it: back to page 0's end."""
    full = tmp_path / "full.tar.gz"
    backup(store, full)
    with ArchiveReader(full) as r:
        p0_end = r.index.entry(PAGE).offset
        p1_end = r.index.entry(2 * PAGE).offset
        e = r.index.entry(2 * PAGE - 1)
        p1_start = e.offset + e.length
        page1 = bytes(r._read_page(1, p1_start, p1_end - p1_start,
                                   xxh3_64(full.read_bytes()[p1_start:p1_end])))
        version, flags = r.version, r.flags
    blob = full.read_bytes()
    if damage == "flipped byte":  # page 1 is stored blocks: its CRC fails
        data = bytearray(blob[:p1_end + 100])
        data[p1_start + 700] ^= 1
    else:  # a valid member; "other entries": entry 0's key digest is not chunk 256's
        altered = bytearray(page1)
        if damage == "other entries":
            altered[64 + 56] ^= 1
        data = bytearray(blob[:p1_start] + page_member(bytes(altered), 1, version, flags))
    final = tmp_path / "a.tar.gz"
    killed_copy(bytes(data), final, False)
    backup(store, final, resume=True)
    with ArchiveReader(final) as r:
        assert r.summary["resumed"][0]["from_seq"] == from_seq
        if from_seq == PAGE:
            assert r.index.entry(PAGE).offset == p0_end
    assert BackupManager().verify_backup(final, deep=True).ok


@pytest.mark.parametrize("mode,message", [
    ("never", "the index is paged there, --paged-index never now"),
])
def test_paged_mode_must_agree(tmp_path, store, mode, message):
    full = tmp_path / "full.tar.gz"
    backup(store, full)
    final = tmp_path / "a.tar.gz"
    tmp = killed_copy(cut(full, PAGE + 3, 10), final, False)
    with pytest.raises(ArchiveError, match=message):
        backup(store, final, resume=True, paged_index=mode)
    assert tmp.exists()
    backup(store, final, resume=True, paged_index="auto")  # auto follows the file
    assert BackupManager().verify_backup(final, deep=True).ok


def test_single_index_file_with_paged_always_is_refused(tmp_path, store):
    full = tmp_path / "full.tar.gz"
    backup(store, full, paged_index="never")
    with ArchiveReader(full) as r:
        e = r.index.entry(10)
    final = tmp_path / "a.tar.gz"
    killed_copy(full.read_bytes()[:e.offset + 30], final, False)
    with pytest.raises(ArchiveError, match="the index is single there, --paged-index always"):
        backup(store, final, resume=True)
