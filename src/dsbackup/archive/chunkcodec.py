"""Decoding a chunk member by its archive's codec (docs/FORMAT.md §11.6): a zstd chunk's
frame is decompressed straight out of the member's stored blocks (no unframing copy), or out
of the opened plaintext of an encrypted one. Deflate chunks stay with member.decode_member."""

from __future__ import annotations

import struct
from typing import Any

from dsbackup._ext.checksum import crc32, xxh3_64
from dsbackup._ext.compress import (
    STORED_TAR_PREFIX,
    MemberError,
    zstd_content_size,
    zstd_decode,
)
from dsbackup.archive import format as fmt
from dsbackup.archive.buffers import Taker
from dsbackup.archive.member import _check_head, check_tar_header, sealed_layout_length
from dsbackup.errors import IntegrityError

_TAIL = struct.Struct("<II")
# the most a zstd frame can give per byte: a 4-byte RLE block decodes to 128 KiB
ZSTD_MAX_RATIO = 32768


def decode_zstd_chunk(reader: Any, i: int, raw: bytes | memoryview, entry: Any,
                      where: str, gzip_crc: bool = True, into: Taker | None = None
                      ) -> memoryview:
    """The payload of chunk `i` (index entry `entry`) of `reader`'s zstd archive from its
    member bytes `raw` (already checked against the index's member XXH3; ``gzip_crc`` and
    ``into``: as ``ArchiveReader.decode_chunk_member``'s): every check of §2/§11.6,
    IntegrityError naming the chunk on any failure."""
    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"{where}: {msg}", chunk=i)

    name = fmt.chunk_name(i)
    if reader.cipher is not None:  # §11.4 with bit 2: the sealed plaintext is the frame
        plain = reader.sealed_plaintext(fmt.TYPE_CHUNK, i, raw, where, name, entry.epoch,
                                        gzip_crc=gzip_crc)
        payload, _crc, _x = _decode(plain, len(plain), entry, False, 0, fail, into)
        return _checked(payload, entry, fail)
    mv = memoryview(raw)
    try:
        sub = fmt.parse_member_head(mv, where)
    except IntegrityError as exc:
        exc.chunk = i
        raise
    _check_head(sub, fail, fmt.TYPE_CHUNK, reader.version, reader.flags)
    if (sub.seq, sub.records) != (i, entry.records):
        raise fail("member header disagrees with the index")
    if len(mv) != sealed_layout_length(sub):  # before the ratio limit trusts data_len
        raise fail(f"member length {len(mv)} does not match its declared {sub.data_len}-byte "
                   "frame in stored blocks")
    off = sub.deflate_offset
    end = len(mv) - 8
    if end < off + 5 + fmt.TAR_BLOCK or bytes(mv[off:off + 5]) != STORED_TAR_PREFIX:
        raise fail("the tar header is not in a stored block")
    header = mv[off + 5:off + 5 + fmt.TAR_BLOCK]
    check_tar_header(header, sub, name, fail)
    payload, crc, frame_xxh3 = _decode(mv[off + 5 + fmt.TAR_BLOCK:end], sub.data_len, entry,
                                       True, crc32(header), fail, into)
    want_crc, isize = _TAIL.unpack_from(mv, end)
    if crc != want_crc:
        raise fail("CRC-32 mismatch")
    if isize != (fmt.TAR_BLOCK + fmt.padded(sub.data_len)) & 0xFFFFFFFF:
        raise fail(f"ISIZE {isize} does not match the declared size")
    if frame_xxh3 != sub.data_xxh3:
        raise fail("data XXH3 mismatch")
    return _checked(payload, entry, fail)


def _decode(buf: Any, frame_len: int, entry: Any, stored: bool, crc: int,
            fail: Any, into: Taker | None = None) -> tuple[bytes, int, int]:
    if entry.payload_len > ZSTD_MAX_RATIO * frame_len + 1024:
        raise fail(f"declares {entry.payload_len} bytes of payload, impossible from a "
                   f"{frame_len}-byte zstd frame (decompression bomb or damage)")
    try:
        return zstd_decode(buf, frame_len, entry.payload_len, stored, crc,
                           None if into is None else into(entry.payload_len))
    except MemberError as exc:
        raise fail(str(exc)) from None


def _checked(payload: bytes | memoryview, entry: Any, fail: Any) -> memoryview:
    if xxh3_64(payload) != entry.payload_xxh3:
        raise fail("payload XXH3 mismatch")
    return memoryview(payload)


def frame_payload(frame: bytes | memoryview, where: str, chunk: int | None = None) -> bytes:
    """The payload of a zstd chunk's frame found without an index (salvage, a resumed
    backup's rescan): its length is the frame's declared content size, bounded by the
    format's maximum ratio; the caller checks the records (scan_payload)."""
    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"{where}: {msg}", chunk=chunk)

    n = zstd_content_size(frame)
    if n < 0:
        raise fail("zstd chunk: " + ("the frame does not declare its content size" if n == -1
                                     else "not a zstd frame (bad magic or frame header)"))
    if n > ZSTD_MAX_RATIO * len(frame) + 1024:
        raise fail(f"declares {n} bytes of payload, impossible from a {len(frame)}-byte zstd "
                   "frame (decompression bomb or damage)")
    try:
        return zstd_decode(frame, len(frame), n, False)[0]
    except MemberError as exc:
        raise fail(str(exc)) from None
