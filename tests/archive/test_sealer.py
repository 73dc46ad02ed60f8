"""archive/sealer.py and the encrypted writer's use of it: chunks sealed by one native thread
in order, the same bytes as seal_into; appended as they are sealed, at most SEAL_AHEAD behind;
no worker slot held (a body is encrypted before add_chunk returns); errors raised in the
caller's thread; members identical however the bodies were handed over."""

from __future__ import annotations

import os
import threading

import pytest

from dsbackup._ext import seal
from dsbackup._ext.framing import Chunker
from dsbackup.archive import crypto, sealer
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.sealer import SEAL_AHEAD, SealingThread
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.errors import ArchiveError
from dsbackup.pipeline.chunks import BodyView, ReadyChunk, compress_chunk

KEY = b"k" * 32


def test_jobs_are_sealed_in_order_as_seal_into_seals_them():
    key = seal.GcmKey(KEY)
    t = SealingThread(key)
    sizes = [0, 1, 100, 65535 - 16, 65536, 200_000, 650_000] * 3
    pending = []
    for i, n in enumerate(sizes):
        if len(pending) == 8:  # the ring holds 8 jobs not collected
            job, args, out = pending.pop(0)
            expected = bytearray(seal.sealed_size(len(args[2])))
            assert t.result(job) == seal.seal_into(key, *args, expected)
            assert out[:len(expected)] == expected
        args = (os.urandom(12), os.urandom(37), os.urandom(n))
        out = bytearray(seal.sealed_size(n) + 7)
        pending.append((t.submit(*args, out), args, out))
        assert pending[-1][0] == i
    for job, args, out in pending:
        expected = bytearray(seal.sealed_size(len(args[2])))
        assert t.result(job) == seal.seal_into(key, *args, expected)
        assert out[:len(expected)] == expected
    assert t.done == len(sizes)
    t.close()


def test_buffers_are_held_until_collected_and_a_closed_thread_refuses_jobs():
    key = seal.GcmKey(KEY)
    t = SealingThread(key)
    data, out = bytearray(1000), bytearray(seal.sealed_size(1000))
    jobs = [t.submit(b"n" * 12, b"", data, out) for _ in range(8)]
    with pytest.raises(RuntimeError, match="8 jobs not collected"):
        t.submit(b"n" * 12, b"", data, out)
    with pytest.raises(BufferError):
        data.extend(b"x")  # exported to the sealing thread: it cannot move
    with pytest.raises(ValueError, match="not the next"):
        t.result(jobs[1])
    assert t.result(jobs[0])[0] == seal.sealed_size(1000)
    with pytest.raises(ValueError, match="too short|bytes, .* are needed"):
        t.submit(b"n" * 12, b"", bytes(2000), out)
    t.close()
    data.extend(b"x")  # let go once the thread stopped
    out.extend(b"x")
    with pytest.raises(RuntimeError, match="stopped"):
        t.submit(b"n" * 12, b"", data, out)
    t.close()  # twice is harmless


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


def test_slots_are_not_held_and_members_are_the_same(tmp_path, fixed_key, monkeypatch):
    """Bodies in bytes, in worker slots (reused once add_chunk returns) and in a plain
    memoryview (reused at once by its owner): the same archive bytes; no slot is held, even
    while the sealing thread lags and add_chunk waits for it."""
    cs = _chunks()
    assert len(cs) > 3 * SEAL_AHEAD
    reference = _write(tmp_path / "bytes.tar.gz", cs)
    ref_bytes = (tmp_path / "bytes.tar.gz").read_bytes()

    # the sealing thread seems to lag: add_chunk must wait, not queue more
    monkeypatch.setattr(sealer.SealingThread, "done",
                        property(lambda self: max(0, self._ring.done - 3)))
    slots = Slots()
    material = crypto.KeyMaterial(key=KEY)
    with ArchiveWriter(tmp_path / "slots.tar.gz", manifest={"t": 1}, key=material,
                       created=1_700_000_000) as w:
        for c in cs:
            slots.add(w, c)
            assert w._submitted - w._appended <= SEAL_AHEAD
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


def test_a_write_error_in_the_sealing_thread_fails_the_backup(tmp_path, monkeypatch):
    """The sink fails while a sealed chunk is appended: add_chunk or finish raises that
    error, no slot is held, no archive appears."""
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


def test_chunk_count_counts_queued_chunks(tmp_path):
    cs = _chunks()
    material = crypto.KeyMaterial(key=KEY)
    with ArchiveWriter(tmp_path / "a.tar.gz", manifest={"t": 1}, key=material,
                       created=1_700_000_000) as w:
        for i, c in enumerate(cs):
            w.add_chunk(c, c.catalog_body, c.catalog_xxh3)
            assert w.chunk_count == i + 1
        meta = w.finish()
    assert meta.chunks == len(cs)


def test_a_seal_error_in_the_thread_fails_the_backup(tmp_path, monkeypatch):
    """OpenSSL fails on a chunk in the sealing thread (its error is raised when the result
    is collected): the writer raises that error (the chunks queued behind it are dropped),
    no slot is held, no archive appears."""
    cs = _chunks()
    slots = Slots()
    result = sealer.SealingThread.result
    calls = [0]

    def failing(self, job):
        calls[0] += 1
        if calls[0] == 5:
            raise seal.SealError("OpenSSL could not encrypt (test)")
        return result(self, job)

    monkeypatch.setattr(sealer.SealingThread, "result", failing)
    path = tmp_path / "a.tar.gz"
    with (pytest.raises(ArchiveError, match="could not encrypt"),
          ArchiveWriter(path, manifest={"t": 1}, key=crypto.KeyMaterial(key=KEY)) as w):
        for c in cs:
            slots.add(w, c)
        w.finish()
    assert slots.held == 0 and calls[0] == 5
    assert list(tmp_path.iterdir()) == []
