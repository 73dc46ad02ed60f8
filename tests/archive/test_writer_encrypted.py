"""The encrypted writer's chunks (ArchiveWriter._add_sealed): encrypted, framed and written
before add_chunk returns, so no worker slot is held; members identical however the bodies were
handed over (bytes, worker slots reused at once, plain views); a write or seal error fails the
backup and leaves no archive."""

from __future__ import annotations

import threading

import pytest

from dsbackup._ext import seal
from dsbackup._ext.framing import Chunker
from dsbackup.archive import crypto
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.errors import ArchiveError
from dsbackup.pipeline.chunks import BodyView, ReadyChunk, compress_chunk

KEY = b"k" * 32


def _chunks(n_records: int = 3000) -> list[ReadyChunk]:
    ch = Chunker(40, 1 << 20)
    keys = [b"/k/%06d" % i for i in range(n_records)]
    vals = [(b"value %d " % i) * (i % 50) for i in range(n_records)]
    out = list(ch.add(keys, vals))
    last = ch.finish()
    return [compress_chunk(c, 1, True) for c in out + ([last] if last else [])]


class Slots:
    """Bodies in a reused buffer, as a parallel scan's worker slots: a slot is reused
    (overwritten) as soon as add_chunk returns, unless the writer holds it (BodyView.hold),
    then once it is released. The encrypted writer reads a body before add_chunk returns, so
    it never holds one."""

    def __init__(self) -> None:
        self.held = 0
        self.outstanding = 0
        self.lock = threading.Lock()

    def add(self, w: ArchiveWriter, c: ReadyChunk) -> None:
        buf = bytearray(c.body.data)
        state = {"held": False}

        def release():
            with self.lock:
                self.outstanding -= 1
            buf[:] = bytes(len(buf))

        def hold():
            assert not state["held"]
            state["held"] = True
            with self.lock:
                self.held += 1
                self.outstanding += 1
            return release

        b = c.body
        body = BodyView(memoryview(buf), b.crc32, b.size, b.input_len, hold)
        w.add_chunk(ReadyChunk(c.record_count, c.first_key, c.last_key, c.keys_xxh3,
                               c.payload_xxh3, c.raw_bytes, body, c.catalog_body,
                               c.catalog_xxh3), c.catalog_body, c.catalog_xxh3)
        if not state["held"]:
            buf[:] = bytes(len(buf))  # the worker reuses the slot at once


def _write(path, chunks):
    material = crypto.KeyMaterial(key=KEY)
    with ArchiveWriter(path, manifest={"t": 1}, key=material,
                       created=1_700_000_000) as w:
        for c in chunks:
            w.add_chunk(c, c.catalog_body, c.catalog_xxh3)
        w.finish()
    with ArchiveReader(path, key=material) as r:
        return [(r.read_member(i), r.read_catalog_member(i)) for i in range(r.chunk_count)]


@pytest.fixture
def fixed_key(monkeypatch):
    fixed = {crypto.ID_BYTES: b"\x11" * 16, crypto.KEY_BYTES: b"\x22" * 32,
             crypto.NONCE_BYTES: b"\x44" * 12}
    monkeypatch.setattr(crypto, "_random", lambda n: fixed[n])


def test_slots_are_not_held_and_members_are_the_same(tmp_path, fixed_key):
    """Bodies in bytes, in worker slots (reused once add_chunk returns) and in a plain
    memoryview (reused at once by its owner): the same archive bytes; no slot is held; each
    chunk's member is written before add_chunk returns."""
    cs = _chunks()
    assert len(cs) > 12
    reference = _write(tmp_path / "bytes.tar.gz", cs)
    ref_bytes = (tmp_path / "bytes.tar.gz").read_bytes()

    slots = Slots()
    material = crypto.KeyMaterial(key=KEY)
    with ArchiveWriter(tmp_path / "slots.tar.gz", manifest={"t": 1}, key=material,
                       created=1_700_000_000) as w:
        for i, c in enumerate(cs):
            before = w.bytes_written
            slots.add(w, c)
            assert w.chunk_count == i + 1 and w.bytes_written > before
        w.finish()
    assert slots.held == 0 and slots.outstanding == 0
    assert (tmp_path / "slots.tar.gz").read_bytes() == ref_bytes
    with ArchiveReader(tmp_path / "slots.tar.gz", key=material) as r:
        assert [(r.read_member(i), r.read_catalog_member(i))
                for i in range(r.chunk_count)] == reference

    views = []
    for c in cs:  # a buffer without hold: copied before add_chunk returns
        buf = bytearray(c.body.data)
        views.append((buf, ReadyChunk(c.record_count, c.first_key, c.last_key, c.keys_xxh3,
                                      c.payload_xxh3, c.raw_bytes,
                                      BodyView(memoryview(buf), c.body.crc32, c.body.size,
                                               c.body.input_len),
                                      c.catalog_body, c.catalog_xxh3)))
    material = crypto.KeyMaterial(key=KEY)
    with ArchiveWriter(tmp_path / "views.tar.gz", manifest={"t": 1}, key=material,
                       created=1_700_000_000) as w:
        for buf, c in views:
            w.add_chunk(c, c.catalog_body, c.catalog_xxh3)
            buf[:] = bytes(len(buf))  # the owner reuses it at once
        w.finish()
    assert (tmp_path / "views.tar.gz").read_bytes() == ref_bytes


def test_a_write_error_fails_the_backup(tmp_path, monkeypatch):
    """The sink fails while a sealed chunk is written: add_chunk raises that error, no slot
    is held, no archive appears."""
    cs = _chunks()
    slots = Slots()
    path = tmp_path / "a.tar.gz"
    material = crypto.KeyMaterial(key=KEY)
    with (pytest.raises(ArchiveError, match="No space left"),
          ArchiveWriter(path, manifest={"t": 1}, key=material, created=1_700_000_000) as w):
        sink_write = w._sink.write
        calls = [0]

        def failing(pieces):
            calls[0] += 1
            if calls[0] == 6:
                raise ArchiveError(f"{path}: write failed: No space left on device")
            return sink_write(pieces)

        monkeypatch.setattr(w._sink, "write", failing)
        for c in cs:
            slots.add(w, c)
        w.finish()
    assert slots.held == 0 and calls[0] >= 6
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_chunk_count_counts_written_chunks(tmp_path):
    cs = _chunks()
    material = crypto.KeyMaterial(key=KEY)
    with ArchiveWriter(tmp_path / "a.tar.gz", manifest={"t": 1}, key=material,
                       created=1_700_000_000) as w:
        for i, c in enumerate(cs):
            w.add_chunk(c, c.catalog_body, c.catalog_xxh3)
            assert w.chunk_count == i + 1
        meta = w.finish()
    assert meta.chunks == len(cs)


def test_a_seal_error_fails_the_backup(tmp_path, monkeypatch):
    """The library fails on a chunk (encrypt_stored raises SealError): the writer raises that
    error, no slot is held, no archive appears."""
    cs = _chunks()
    slots = Slots()
    encrypt = crypto.ArchiveCipher.encrypt_stored
    calls = [0]

    def failing(self, *args, **kw):
        calls[0] += 1
        if calls[0] == 5:
            raise seal.SealError("cryptography could not encrypt (test)")
        return encrypt(self, *args, **kw)

    monkeypatch.setattr(crypto.ArchiveCipher, "encrypt_stored", failing)
    path = tmp_path / "a.tar.gz"
    with (pytest.raises(ArchiveError, match="could not encrypt"),
          ArchiveWriter(path, manifest={"t": 1}, key=crypto.KeyMaterial(key=KEY)) as w):
        for c in cs:
            slots.add(w, c)
        w.finish()
    assert slots.held == 0 and calls[0] == 5
    assert list(tmp_path.iterdir()) == []


def test_an_encrypted_file_is_synced_early_more_often(tmp_path):
    """Its writer fsyncs the file before sealing the index (`finishing`), on the critical
    path: early syncs every SEALING_SYNC_STEP leave that fsync less to wait for."""
    from dsbackup.storage.writeback import SEALING_SYNC_STEP

    plain = ArchiveWriter(tmp_path / "p.tar.gz", manifest={"t": 1})
    enc = ArchiveWriter(tmp_path / "e.tar.gz", manifest={"t": 1},
                        key=crypto.KeyMaterial(key=KEY))
    try:
        assert plain._sink._writeback.sync_step is None
        assert enc._sink._writeback.sync_step == SEALING_SYNC_STEP
    finally:
        plain.abort()
        enc.abort()
    assert list(tmp_path.iterdir()) == []
