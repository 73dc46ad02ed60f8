"""Reading sealed members in place (docs/FORMAT.md §11.4; archive.member.sealed_pieces,
ArchiveCipher.open_pieces, ArchiveReader's sealed path): the stored blocks checked where they
lie, their ciphertext decrypted into a reused buffer, nothing inflated before the tag
matched; exact at the 65535-byte block boundaries, with buffers reused across sizes."""

from __future__ import annotations

import random
import threading
import zlib

import pytest

from dsbackup import datasets
from dsbackup._ext.checksum import stored_tar_member
from dsbackup._ext.compress import deflate_body, tar_header
from dsbackup.archive import crypto
from dsbackup.archive import format as fmt
from dsbackup.archive import reader as reader_mod
from dsbackup.archive.member import STORED_MAX, sealed_layout_length, sealed_pieces
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import IntegrityError

AID = b"\x11" * 16
DK = b"\x22" * 32
VERSION = 2


def cipher() -> crypto.ArchiveCipher:
    return crypto.ArchiveCipher(AID, bytearray(DK), VERSION)


def sealed_member(c: crypto.ArchiveCipher, seq: int, plain: bytes) -> bytes:
    """A chunk member of `plain` (the compressed body) sealed as the writer seals it."""
    body, digest = c.seal_stored(fmt.TYPE_CHUNK, seq, plain)
    sub = fmt.chunk_subfield(seq, 0, body.input_len, digest, VERSION, fmt.FLAG_ENCRYPTED)
    head, tail, _ = stored_tar_member(sub, tar_header(fmt.chunk_name(seq), body.input_len, 0),
                                      body.data, body.crc32, body.size)
    return head + bytes(body.data) + tail


def open_member(c: crypto.ArchiveCipher, seq: int, raw: bytes | bytearray) -> bytes:
    where = f"chunk {seq}"
    _sub, pieces = sealed_pieces(raw, where, expected_type=fmt.TYPE_CHUNK,
                                 expected_name=fmt.chunk_name(seq), chunk=seq,
                                 version=VERSION, flags=fmt.FLAG_ENCRYPTED)
    return bytes(c.open_pieces(fmt.TYPE_CHUNK, seq, pieces, where, chunk=seq))


# ciphertext || tag of 65534, 65535, 65536 and 131070 bytes (and around them: the tag
# straddles a block boundary, the padding spills into a block of its own)
STORED_LENGTHS = [16, 17, 511, 512, 513, 65519, 65520, 65527, 65534, 65535, 65536, 65550,
                  65551, 131054, 131069, 131070, 131071, 131072, 200_000]


@pytest.mark.parametrize("stored", STORED_LENGTHS)
def test_block_boundaries_round_trip(stored):
    c = cipher()
    plain = random.Random(stored).randbytes(stored - crypto.TAG_BYTES)
    raw = sealed_member(c, 5, plain)
    sub = fmt.parse_member_head(raw, "t")
    assert sub.data_len == stored and len(raw) == sealed_layout_length(sub)
    assert open_member(c, 5, raw) == plain
    # the reference: cryptography's one-shot AESGCM over the same ciphertext
    _sub, pieces = sealed_pieces(raw, "t", expected_type=fmt.TYPE_CHUNK,
                                 expected_name=fmt.chunk_name(5))
    joined = b"".join(bytes(p) for p in pieces)
    assert len(joined) == stored
    assert c.open(fmt.TYPE_CHUNK, 5, joined, "t") == plain


def test_buffer_reused_across_sizes_and_threads():
    """One thread's buffer serves members of every size, large then small then large; two
    threads never share one."""
    c = cipher()
    sizes = [200_000, 17, 65535, 131070, 1, 300_000, 65519, 512]
    members = [(i, random.Random(i).randbytes(n)) for i, n in enumerate(sizes)]
    raws = [sealed_member(c, i, p) for i, p in members]
    for _ in range(2):
        for (i, p), raw in zip(members, raws):
            assert open_member(c, i, raw) == p
    errors: list[BaseException] = []

    def run(order: list[int]) -> None:
        try:
            for _ in range(20):
                for j in order:
                    assert open_member(c, j, raws[j]) == members[j][1]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(o,)) for o in
          (list(range(len(sizes))), list(range(len(sizes)))[::-1])]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def flips(raw: bytes) -> dict[str, list[int]]:
    """Byte offsets of each region of a sealed member of at least three stored blocks."""
    sub = fmt.parse_member_head(raw, "t")
    d = sub.deflate_offset
    blocks = d + len(fmt.STORED_TAR_PREFIX) + fmt.TAR_BLOCK

    def at(s: int) -> int:  # the member offset of byte s of the tar entry's data
        return blocks + 5 * (s // STORED_MAX + 1) + s

    n = sub.data_len
    out = {
        "ciphertext": [at(0), at(STORED_MAX - 1), at(STORED_MAX), at(2 * STORED_MAX + 7),
                       at(n - crypto.TAG_BYTES - 1)],
        "tag": [at(n - crypto.TAG_BYTES), at(n - 1)],
        "block header": [blocks + k * (STORED_MAX + 5) + j for k in range(3) for j in range(5)],
        "tar header": [d + len(fmt.STORED_TAR_PREFIX) + j for j in (0, 100, 124, 200)],
        "header block": list(range(d, d + len(fmt.STORED_TAR_PREFIX))),
        "crc and isize": [len(raw) - 8, len(raw) - 1],
        "subfield": list(range(fmt.SUBFIELD_OFFSET, d)),
    }
    if fmt.padded(n) > n:
        out["padding"] = [at(n), at(fmt.padded(n) - 1)]
    return out


def with_crc(raw: bytes | bytearray) -> bytes:
    """`raw` with its gzip CRC-32 recomputed over its stored blocks' data."""
    sub = fmt.parse_member_head(bytes(raw), "t")
    pos = sub.deflate_offset + len(fmt.STORED_TAR_PREFIX)
    crc = zlib.crc32(raw[pos : pos + fmt.TAR_BLOCK])
    pos += fmt.TAR_BLOCK
    while pos < len(raw) - 8:
        n = int.from_bytes(raw[pos + 1 : pos + 3], "little")
        crc = zlib.crc32(raw[pos + 5 : pos + 5 + n], crc)
        pos += 5 + n
    return bytes(raw[:-8]) + crc.to_bytes(4, "little") + bytes(raw[-4:])


def test_bit_flips_name_the_chunk_and_never_reach_the_inflate(tmp_path, monkeypatch):
    """Every flip in a sealed member (ciphertext, tag, stored-block headers, tar header,
    padding, CRC-32/ISIZE, subfield) is an IntegrityError naming the chunk, even with the
    member XXH3 check out of the way; a flip in the ciphertext or tag fails the tag before
    anything is inflated."""
    records = [(b"/k/%05d" % i, random.Random(i).randbytes(40_000)) for i in range(60)]
    path = tmp_path / "a.tar.gz"
    datasets.write_lmdb(str(tmp_path / "src"), iter(records))
    BackupManager(BackupConfig(workers=1, chunk_size=20, compression_level=0,
                               encryption=crypto.KeyMaterial(key=DK))
                  ).create_backup(f"lmdb:{tmp_path / 'src'}", path)
    inflated: list[int] = []
    real = reader_mod.inflate_sealed_body

    def spy(plain, length, xxh3, where, *, chunk=None, part=None, into=None):
        inflated.append(chunk)
        return real(plain, length, xxh3, where, chunk=chunk, part=part, into=into)

    monkeypatch.setattr(reader_mod, "inflate_sealed_body", spy)
    with ArchiveReader(path, key=crypto.KeyMaterial(key=DK)) as r:
        i = 1
        good = r.read_member(i)
        assert fmt.parse_member_head(good, "t").data_len > 2 * STORED_MAX
        payload = bytes(r.read_chunk(i))
        assert bytes(r.decode_chunk_member(i, good)) == payload
        regions = flips(good)
        heads = regions["header block"][:1] + regions["block header"][::5]
        for region, offsets in regions.items():
            for pos in offsets:
                for bit in (0, 7):
                    bad = bytearray(good)
                    bad[pos] ^= 1 << bit
                    inflated.clear()
                    if region in ("header block", "block header") and bit >= 3 and (
                            pos in heads):
                        # bits deflate ignores (a stored block's header is 3 bits, then
                        # padding to the byte): the general inflate reads the same data, as
                        # it did before; only the index's member XXH3 sees this flip
                        assert bytes(r.decode_chunk_member(i, bytes(bad))) == payload
                        continue
                    with pytest.raises(IntegrityError) as exc:
                        r.decode_chunk_member(i, bytes(bad))
                    assert exc.value.chunk == i, (region, pos)
                    assert f"chunk {i}" in str(exc.value), (region, pos)
                    if region in ("ciphertext", "tag"):  # caught by the CRC-32 first
                        with pytest.raises(IntegrityError) as exc:
                            r.decode_chunk_member(i, with_crc(bad))  # as an attacker would
                        assert exc.value.chunk == i, (region, pos)
                        assert "authentication failed" in str(exc.value), (region, pos)
                    assert not inflated, (region, pos)
        assert inflated == []
        assert bytes(r.decode_chunk_member(i, good)) == bytes(r.read_chunk(i)) and inflated


def test_restore_writes_nothing_of_a_chunk_whose_tag_fails(tmp_path, monkeypatch):
    """A chunk whose ciphertext fails its tag (handed to the reader past the member XXH3
    check): the restore stops with an IntegrityError naming it (exit 3) and none of that
    chunk's records is in the target."""
    records = [(b"/k/%05d" % i, random.Random(i).randbytes(3000)) for i in range(400)]
    datasets.write_lmdb(str(tmp_path / "src"), iter(records))
    path = tmp_path / "a.tar.gz"
    material = crypto.KeyMaterial(key=DK)
    BackupManager(BackupConfig(workers=2, chunk_size=40, encryption=material)
                  ).create_backup(f"lmdb:{tmp_path / 'src'}", path)
    with ArchiveReader(path, key=material) as r:
        assert r.chunk_count >= 4
        bad_chunk = r.chunk_count - 2
        e = r.entry(bad_chunk)
        first, last = e.first_key, e.last_key
        assert first > records[0][0]
    real = ArchiveReader._member_in_buffer  # what read_chunk reads a member with

    def damaged(self, i):
        raw = real(self, i)
        if i != bad_chunk:
            return raw
        buf = bytearray(raw)
        buf[fmt.parse_member_head(bytes(raw), "t").deflate_offset + 600] ^= 0x40  # ciphertext
        return with_crc(buf)

    monkeypatch.setattr(ArchiveReader, "_member_in_buffer", damaged)
    target = tmp_path / "dst"
    for uri in (f"lmdb:{target}", f"sqlite:{tmp_path / 'dst.sqlite'}"):
        with crypto.using_key(material), pytest.raises(IntegrityError) as exc:
            restore_archive(path, uri, workers=2, resume=False, batch_bytes=1)
        assert exc.value.chunk == bad_chunk and "authentication failed" in str(exc.value)
        ds = open_datastore(uri)
        try:
            keys = [k for batch, _ in ds.scan_batches() for k in batch]
        finally:
            ds.close()
        assert not [k for k in keys if first <= k <= last]
        assert records[0][0] in keys  # the chunks before it were written, one batch each


def test_restore_round_trip_with_chunks_of_many_sizes(tmp_path):
    """Records from a few bytes to 300 kB make chunks of very different sizes; an encrypted
    restore with 2 threads (their buffers reused) gives exactly the store back, and every
    chunk's payload equals that of an unencrypted archive of the same store."""
    rng = random.Random(3)
    records = sorted((b"/r/%05d" % i, rng.randbytes(rng.choice((5, 900, 70_000, 300_000))))
                     for i in range(160))
    datasets.write_lmdb(str(tmp_path / "src"), iter(records))
    material = crypto.KeyMaterial(key=DK)
    enc, plain = tmp_path / "e.tar.gz", tmp_path / "p.tar.gz"
    for p, m in ((enc, material), (plain, None)):
        BackupManager(BackupConfig(workers=2, chunk_size=6, encryption=m)
                      ).create_backup(f"lmdb:{tmp_path / 'src'}", p)
    with ArchiveReader(enc, key=material) as re_, ArchiveReader(plain) as rp:
        assert re_.chunk_count == rp.chunk_count > 10
        lengths = {re_.entry(i).length for i in range(re_.chunk_count)}
        assert max(lengths) > 4 * STORED_MAX and min(lengths) < STORED_MAX
        for i in [*range(re_.chunk_count), *reversed(range(re_.chunk_count))]:
            assert bytes(re_.read_chunk(i)) == bytes(rp.read_chunk(i))
    with crypto.using_key(material):
        restore_archive(enc, f"lmdb:{tmp_path / 'dst'}", workers=2)
    ds = open_datastore(f"lmdb:{tmp_path / 'dst'}")
    try:
        got = [kv for keys, values in ds.scan_batches() for kv in zip(keys, values)]
    finally:
        ds.close()
    assert got == records


def test_a_member_outside_the_writers_layout_still_opens():
    """A sealed member whose tar entry is deflated some other valid way (not the writer's
    stored blocks) is read by the general inflate and opens the same."""
    c = cipher()
    plain = random.Random(9).randbytes(70_000)
    raw = sealed_member(c, 3, plain)
    sub = fmt.parse_member_head(raw, "t")
    _s, pieces = sealed_pieces(raw, "t", expected_type=fmt.TYPE_CHUNK,
                               expected_name=fmt.chunk_name(3))
    sealed = b"".join(bytes(p) for p in pieces)
    body = deflate_body(sealed, 6)  # compressed, not stored
    sub_bytes = raw[fmt.SUBFIELD_OFFSET:sub.deflate_offset]
    head, tail, _ = stored_tar_member(sub_bytes, tar_header(fmt.chunk_name(3), len(sealed), 0),
                                      body.data, body.crc32, body.size)
    other = head + bytes(body.data) + tail
    assert other != raw
    assert open_member(c, 3, other) == plain


@pytest.mark.parametrize("codec", [{"compression_level": 0}, {"codec": "zstd"}])
def test_restore_path_leaves_the_ciphertext_crc_to_the_member_xxh3(tmp_path, monkeypatch,
                                                                     codec):
    """``read_chunk`` (restore) does not recompute an encrypted member's CRC-32 of its
    ciphertext (``gzip_crc=False``): the index's member XXH3, checked first, covers the same
    bytes, so damage there is still exit 3 naming the chunk, from the XXH3; past that check,
    any other flip still fails, a ciphertext or tag flip at the tag (no CRC to fix up) and
    before anything is inflated. Deep verify's ``decode_chunk_member`` keeps the CRC-32."""
    records = [(b"/k/%05d" % i, random.Random(i).randbytes(40_000)) for i in range(60)]
    path = tmp_path / "a.tar.gz"
    datasets.write_lmdb(str(tmp_path / "src"), iter(records))
    material = crypto.KeyMaterial(key=DK)
    BackupManager(BackupConfig(workers=1, chunk_size=20, encryption=material, **codec)
                  ).create_backup(f"lmdb:{tmp_path / 'src'}", path)
    inflated: list[int] = []
    real = reader_mod.inflate_sealed_body

    def spy(plain, length, xxh3, where, *, chunk=None, part=None, into=None):
        inflated.append(chunk)
        return real(plain, length, xxh3, where, chunk=chunk, part=part, into=into)

    monkeypatch.setattr(reader_mod, "inflate_sealed_body", spy)
    i = 1
    with ArchiveReader(path, key=material) as r:
        good = r.read_member(i)
        payload = bytes(r.read_chunk(i))
        offset = r.entry(i).offset
        regions = flips(good)
        crc_byte = regions["crc and isize"][0]
        bad_crc = bytearray(good)
        bad_crc[crc_byte] ^= 1
        # past the member XXH3: the restore path does not look at the CRC, verify's does
        assert bytes(r.decode_chunk_member(i, bytes(bad_crc), gzip_crc=False)) == payload
        with pytest.raises(IntegrityError, match="CRC-32 mismatch") as exc:
            r.decode_chunk_member(i, bytes(bad_crc))
        assert exc.value.chunk == i
        heads = regions["header block"][:1] + regions["block header"][::5]
        for region, offsets in regions.items():
            for pos in offsets:
                if pos == crc_byte:
                    continue
                for bit in (0, 7):
                    if region in ("header block", "block header") and bit >= 3 and (
                            pos in heads):
                        continue  # bits deflate ignores (see the test above)
                    bad = bytearray(good)
                    bad[pos] ^= 1 << bit
                    inflated.clear()
                    with pytest.raises(IntegrityError) as exc:
                        r.decode_chunk_member(i, bytes(bad), gzip_crc=False)
                    assert exc.value.chunk == i, (region, pos)
                    if region in ("ciphertext", "tag"):
                        assert "authentication failed" in str(exc.value), (region, pos)
                    assert not inflated, (region, pos)
    with ArchiveReader(path, key=material) as r:
        assert bool(r.flags & fmt.FLAG_ZSTD) == ("codec" in codec)
    # the same CRC flip in the file: read_chunk fails at the member XXH3, naming the chunk
    with path.open("r+b") as f:
        f.seek(offset + crc_byte)
        f.write(bytes([good[crc_byte] ^ 1]))
    with ArchiveReader(path, key=material) as r:
        with pytest.raises(IntegrityError, match="member checksum mismatch") as exc:
            r.read_chunk(i)
        assert exc.value.chunk == i
        assert bytes(r.read_chunk(0))  # the others still read
