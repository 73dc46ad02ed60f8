"""A chunk body compressed without its CRC-32 (chunk level DEFLATE_SEALED + L, for encrypted
archives) is refused by an unencrypted writer, where its CRC would be the gzip trailer's: a
wrong one would be a corrupt archive. An encrypted writer takes it and writes the same
members as from a body with the CRC."""

from __future__ import annotations

import pytest

from dsbackup import codec as codecs
from dsbackup._ext.framing import Chunker
from dsbackup.archive import crypto
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.errors import ArchiveError
from dsbackup.pipeline.chunks import BodyView, ReadyChunk, compress_chunk

KEY = crypto.KeyMaterial(key=b"k" * 32)


def _chunks(level: int) -> list[ReadyChunk]:
    ch = Chunker(40, 1 << 20)
    keys = [b"/k/%06d" % i for i in range(1500)]
    vals = [(b"value %d " % i) * (i % 50) for i in range(1500)]
    out = list(ch.add(keys, vals))
    last = ch.finish()
    return [compress_chunk(c, level, True) for c in out + ([last] if last else [])]


def _as_view(c: ReadyChunk) -> ReadyChunk:
    """`c` as a parallel scan's worker hands it over (a BodyView carrying the codec)."""
    b = c.body
    body = BodyView(memoryview(bytes(b.data)), b.crc32, b.size, b.input_len, None,
                    b.content_len, b.xxh3, b.codec)
    return ReadyChunk(c.record_count, c.first_key, c.last_key, c.keys_xxh3, c.payload_xxh3,
                      c.raw_bytes, body, c.catalog_body, c.catalog_xxh3)


@pytest.mark.parametrize("view", [False, True])
def test_an_unencrypted_writer_refuses_a_body_without_its_crc(tmp_path, view):
    c = _chunks(codecs.DEFLATE_SEALED + 1)[0]
    assert c.body.codec == codecs.BODY_DEFLATE_SEALED and c.body.crc32 == 0
    path = tmp_path / "a.tar.gz"
    with pytest.raises(ArchiveError, match="body kind 3"), ArchiveWriter(
            path, manifest={"t": 1}) as w:
        w.add_chunk(_as_view(c) if view else c, c.catalog_body, c.catalog_xxh3)
    assert not path.exists()


def _members(path, chunks) -> list:
    with ArchiveWriter(path, manifest={"t": 1}, key=KEY, created=1_700_000_000) as w:
        for c in chunks:
            w.add_chunk(c, c.catalog_body, c.catalog_xxh3)
        w.finish()
    with ArchiveReader(path, key=KEY) as r:
        return [(r.read_member(i), r.read_catalog_member(i)) for i in range(r.chunk_count)]


def test_an_encrypted_writer_writes_the_same_members_from_bodies_without_the_crc(
        tmp_path, monkeypatch):
    fixed = {crypto.ID_BYTES: b"\x11" * 16, crypto.KEY_BYTES: b"\x22" * 32,
             crypto.NONCE_BYTES: b"\x44" * 12}
    monkeypatch.setattr(crypto, "_random", lambda n: fixed[n])
    with_crc = _members(tmp_path / "crc.tar.gz", _chunks(1))
    sealed = _chunks(codecs.DEFLATE_SEALED + 1)
    assert all(c.body.codec == codecs.BODY_DEFLATE_SEALED for c in sealed)
    assert _members(tmp_path / "nocrc.tar.gz", sealed) == with_crc
    assert _members(tmp_path / "view.tar.gz", [_as_view(c) for c in sealed]) == with_crc
    assert len(with_crc) > 5
    assert (tmp_path / "crc.tar.gz").read_bytes() == (tmp_path / "nocrc.tar.gz").read_bytes()
