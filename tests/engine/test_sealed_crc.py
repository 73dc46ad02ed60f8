"""Backups skip the gzip CRC-32 of chunk payloads only when encrypted (docs/FORMAT.md §11.4:
the member CRC covers the ciphertext, computed as it is sealed). The skip is the backup's
chunk level (dsbackup.codec.DEFLATE_SEALED + L), handed to the workers with the backup's
settings, never a process-wide switch: a plain backup made by the same worker processes
right after an encrypted one still carries every CRC."""

from __future__ import annotations

import gzip
import random
import subprocess

import pytest

from dsbackup import codec as codecs
from dsbackup import datasets
from dsbackup.archive import crypto
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig

KEY = crypto.KeyMaterial(key=b"k" * 32)


@pytest.fixture(autouse=True)
def parallel_even_for_small_stores(monkeypatch):
    monkeypatch.setattr("dsbackup.engine.backup.PARALLEL_MIN_BYTES", 0)


@pytest.fixture
def bodies(monkeypatch):
    """(kind of body, Body.codec, crc32) of every chunk the writer gets."""
    seen: list[tuple[str, int, int]] = []
    real = ArchiveWriter._payload_len

    def spy(self, seq, body):
        seen.append((type(body).__name__, body.codec, body.crc32))
        return real(self, seq, body)

    monkeypatch.setattr(ArchiveWriter, "_payload_len", spy)
    return seen


def _store(tmp_path, n: int = 2500) -> str:
    rng = random.Random(11)
    recs = {}
    while len(recs) < n:
        k = b"/" + bytes(rng.choice(b"ABCDEFGHIJKLMNOP") for _ in range(12))
        # text-like values compress, random ones are stored: both deflate paths
        recs[k] = rng.randbytes(rng.randrange(0, 1500)) if len(recs) % 3 else (
            b"record %d " % len(recs)) * rng.randrange(1, 200)
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), iter(sorted(recs.items())))
    return f"lmdb:{src}"


def _contents(uri: str) -> list[tuple[bytes, bytes]]:
    out = []
    with open_datastore(uri, readonly=True) as ds:
        for keys, values in ds.scan_batches():
            out += list(zip(keys, values))
    return out


def _gzip_ok(path) -> None:
    """Every member's CRC-32 and ISIZE checked by gzip itself and by Python's gzip."""
    subprocess.run(["gzip", "-t", str(path)], check=True)
    gzip.decompress(path.read_bytes())


def test_config_chunk_level_skips_the_crc_only_when_encrypted():
    assert BackupConfig(compression_level=2).chunk_level == 2
    assert BackupConfig(compression_level=2, encryption=KEY).chunk_level == (
        codecs.DEFLATE_SEALED + 2)
    assert BackupConfig(codec="zstd", compression_level=2).chunk_level == codecs.ZSTD_STORED + 2


def test_a_plain_backup_after_an_encrypted_one_has_every_crc(tmp_path, bodies):
    src = _store(tmp_path)
    mgr = BackupManager(BackupConfig(workers=2, chunk_size=40, include_metadata=True))
    enc = BackupManager(BackupConfig(workers=2, chunk_size=40, include_metadata=True,
                                     encryption=KEY))
    enc.create_backup(src, tmp_path / "e.tar.gz")
    sealed = list(bodies)
    bodies.clear()
    mgr.create_backup(src, tmp_path / "p.tar.gz")
    # the encrypted backup's workers skipped the CRC, the plain one's computed it
    assert len(sealed) > 20 and {k for k, _c, _r in sealed} == {"BodyView"}
    assert {c for _k, c, _r in sealed} == {codecs.BODY_DEFLATE_SEALED}
    assert len(bodies) == len(sealed) and {k for k, _c, _r in bodies} == {"BodyView"}
    assert {c for _k, c, _r in bodies} == {codecs.BODY_DEFLATE}
    assert sum(r != 0 for _k, _c, r in bodies) > 20
    _gzip_ok(tmp_path / "p.tar.gz")
    assert verify_archive(tmp_path / "p.tar.gz", deep=True, threads=1).ok
    BackupManager().restore_backup(tmp_path / "p.tar.gz", f"lmdb:{tmp_path / 'dst'}")
    assert _contents(f"lmdb:{tmp_path / 'dst'}") == _contents(src)


def test_an_encrypted_backup_without_the_crc_verifies_deep(tmp_path, bodies):
    src = _store(tmp_path)
    path = tmp_path / "e.tar.gz"
    BackupManager(BackupConfig(workers=2, chunk_size=40, include_metadata=True,
                               encryption=KEY)).create_backup(src, path)
    assert {(k, c) for k, c, _r in bodies} == {("BodyView", codecs.BODY_DEFLATE_SEALED)}
    _gzip_ok(path)  # the members' CRCs cover the ciphertext
    with crypto.using_key(KEY):
        report = verify_archive(path, deep=True, threads=1)
    assert report.ok, report.errors
    BackupManager().restore_backup(path, f"lmdb:{tmp_path / 'dst'}", key=KEY)
    assert _contents(f"lmdb:{tmp_path / 'dst'}") == _contents(src)


def test_encrypted_archives_are_the_same_as_with_the_crc(tmp_path, monkeypatch, bodies):
    """With a fixed data key, the archive is byte-identical to one whose workers computed
    the CRC (the chunk level before the skip)."""
    fixed = {crypto.ID_BYTES: b"\x11" * 16, crypto.KEY_BYTES: b"\x22" * 32,
             crypto.SALT_BYTES: b"\x33" * 16, crypto.NONCE_BYTES: b"\x44" * 12}
    monkeypatch.setattr(crypto, "_random", lambda n: fixed[n])
    src = _store(tmp_path)
    cfg = dict(workers=2, chunk_size=40, include_metadata=True, encryption=KEY)

    def members(name: str) -> list:
        BackupManager(BackupConfig(**cfg)).create_backup(src, tmp_path / name)
        with ArchiveReader(tmp_path / name, key=KEY) as r:
            return [(r.read_member(i), r.read_catalog_member(i)) for i in range(r.chunk_count)]

    skipped = members("skip.tar.gz")
    assert {c for _k, c, _r in bodies} == {codecs.BODY_DEFLATE_SEALED}
    bodies.clear()
    real = codecs.chunk_level
    monkeypatch.setattr(codecs, "chunk_level", lambda codec, level, sealed=False: real(
        codec, level, sealed=sealed and codec != codecs.GZIP))
    with_crc = members("crc.tar.gz")
    assert {c for _k, c, _r in bodies} == {codecs.BODY_DEFLATE}
    assert len(skipped) > 20 and skipped == with_crc
