"""Decoding and checking one member (docs/FORMAT.md §2): header, inflate, CRC, tar header."""

from __future__ import annotations

import struct
from collections.abc import Callable

from dsbackup._ext.checksum import crc32, xxh3_64
from dsbackup._ext.compress import MemberError, inflate_raw, inflate_raw_into, parse_tar_header
from dsbackup.archive import format as fmt
from dsbackup.archive.buffers import Taker
from dsbackup.errors import IntegrityError

_TAIL = struct.Struct("<II")


def decode_member(
    buf: bytes | memoryview,
    where: str,
    *,
    expected_type: int,
    expected_name: bytes | None,
    chunk: int | None = None,
    part: str | None = None,
    version: int | None = None,
    flags: int | None = None,
    data_digest: bool = True,
    into: Taker | None = None,
) -> tuple[fmt.Subfield, memoryview]:
    """Check a whole member held in `buf`; return its subfield and its tar entry's data.
    `into`: where to inflate (a reused buffer of the requested size, archive.buffers);
    default a new bytes object.
    `version`: the archive's format version (from its trailer); a member of another version
    is damage (§11.1: members never mix versions); so is one whose subfield flags differ from
    `flags` (the trailer's).

    Raises IntegrityError naming `where` (and `chunk`/`part`) on any mismatch.
    """
    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"{where}: {msg}", chunk=chunk, part=part)

    try:
        sub = fmt.parse_member_head(buf, where)
    except IntegrityError as exc:
        exc.chunk, exc.part = chunk, part
        raise
    _check_head(sub, fail, expected_type, version, flags)
    mv = memoryview(buf)
    declared = fmt.TAR_BLOCK + fmt.padded(sub.data_len)
    out = _inflate_exactly(mv[sub.deflate_offset : len(mv) - 8], declared, sub.data_len, fail,
                           into)
    return sub, _check_inflated(sub, out, mv[len(mv) - 8:], fail, expected_name, data_digest)


def decode_member_at(mv: memoryview, pos: int, where: str, *, expected_type: int,
                     expected_name: bytes | None, version: int | None = None,
                     flags: int | None = None) -> tuple[fmt.Subfield, memoryview, int]:
    """decode_member for the member starting at `pos` of `mv` whose end is not known yet
    (a walk of members without an index: a resumed backup's rescan): one inflate finds the
    end and gives the data. Returns (subfield, data, end); IntegrityError when the member is
    torn or fails a check."""
    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"{where}: {msg}")

    sub = fmt.parse_member_head(mv[pos:], where)
    _check_head(sub, fail, expected_type, version, flags)
    out, end = _inflate_at(mv, pos, sub, fail)
    return sub, _check_inflated(sub, out, mv[end - 8:end], fail, expected_name, True), end


def _inflate_at(mv: memoryview, pos: int, sub: fmt.Subfield,
                fail: Callable[[str], IntegrityError]) -> tuple[bytes, int]:
    """Inflate the member at `pos` (its head parsed into `sub`) whose end is not known:
    (the inflated tar entry, the member's end offset)."""
    declared = fmt.TAR_BLOCK + fmt.padded(sub.data_len)
    start = pos + sub.deflate_offset
    if declared > fmt.DEFLATE_MAX_RATIO * (len(mv) - start) + 1024:
        raise fail(f"declared size {sub.data_len} is impossible")
    try:
        out, consumed = inflate_raw(mv[start:], declared, declared)
    except MemberError as exc:
        raise fail(f"cannot inflate: {exc}") from None
    end = start + consumed + 8
    if end > len(mv):
        raise fail("member truncated")
    return out, end


def _check_head(sub: fmt.Subfield, fail: Callable[[str], IntegrityError], expected_type: int,
                version: int | None, flags: int | None) -> None:
    if version is not None and sub.version != version:
        raise fail(f"a version-{sub.version} member in a version-{version} archive")
    if flags is not None and sub.flags != flags:
        raise fail(f"subfield flags {sub.flags:#x} differ from the archive's {flags:#x}")
    if sub.member_type != expected_type:
        raise fail(f"is a {fmt.TYPE_NAMES.get(sub.member_type)} member, expected "
                   f"{fmt.TYPE_NAMES[expected_type]}")


def check_tar_header(header: bytes | memoryview, sub: fmt.Subfield,
                     expected_name: bytes | None,
                     fail: Callable[[str], IntegrityError]) -> None:
    """A member's 512-byte tar header (§2.3): valid, named `expected_name` (when given), its
    size the subfield's data length."""
    try:
        name, size, _mtime = parse_tar_header(header)
    except MemberError as exc:
        raise fail(f"bad tar header: {exc}") from None
    if expected_name is not None and name != expected_name:
        raise fail(f"tar entry is named {name!r}, expected {expected_name!r}")
    if size != sub.data_len:
        raise fail(f"tar entry size {size} differs from the declared {sub.data_len}")


def _check_inflated(sub: fmt.Subfield, out: bytes | memoryview, tail: memoryview,
                    fail: Callable[[str], IntegrityError], expected_name: bytes | None,
                    data_digest: bool) -> memoryview:
    """The checks of a member after its inflate: CRC-32, ISIZE, tar header and padding, the
    data's XXH3; its tar entry's data."""
    declared = fmt.TAR_BLOCK + fmt.padded(sub.data_len)
    crc, isize = _TAIL.unpack_from(tail)
    if crc32(out) != crc:
        raise fail("CRC-32 mismatch")
    if isize != declared & 0xFFFFFFFF:
        raise fail(f"ISIZE {isize} does not match the declared size {declared}")
    check_tar_header(out[: fmt.TAR_BLOCK], sub, expected_name, fail)
    end = fmt.TAR_BLOCK + sub.data_len
    if bytes(out[end:]).count(0) != len(out) - end:  # under 512 bytes
        raise fail("non-zero tar padding")
    data = memoryview(out)[fmt.TAR_BLOCK : end]
    # data_digest=False: a sealed member whose bytes were checked against the index's member
    # XXH3 and are authenticated by their AES-GCM tag (the subfield's digest adds nothing)
    if data_digest and xxh3_64(data) != sub.data_xxh3:
        raise fail("data XXH3 mismatch")
    return data


def inflate_sealed_body(plain: bytes | memoryview, length: int, xxh3: int, where: str, *,
                        chunk: int | None = None, part: str | None = None,
                        into: Taker | None = None) -> memoryview:
    """The data of an encrypted chunk or catalog (docs/FORMAT.md §11.4): `plain` is the raw
    deflate stream of data || padding; `length` and `xxh3` come from the index. `into`: as
    decode_member's."""
    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"{where}: {msg}", chunk=chunk, part=part)

    out = _inflate_exactly(plain, fmt.padded(length), length, fail, into)
    if bytes(out[length:]).count(0) != len(out) - length:
        raise fail("non-zero tar padding")
    data = memoryview(out)[:length]
    if xxh3_64(data) != xxh3:
        raise fail("data XXH3 mismatch")
    return data


def _inflate_exactly(deflate: memoryview | bytes, declared: int, data_len: int,
                     fail: Callable[[str], IntegrityError],
                     into: Taker | None = None) -> bytes | memoryview:
    """Inflate a raw deflate stream that must give exactly `declared` bytes and end where
    `deflate` ends (into `into(declared)` when given); a declared size beyond deflate's
    maximum ratio is refused before any work (decompression bomb or damage)."""
    if declared > fmt.DEFLATE_MAX_RATIO * len(deflate) + 1024:
        raise fail(f"declares {data_len} bytes of data, impossible from "
                   f"{len(deflate)} compressed bytes (decompression bomb or damage)")
    try:
        if into is None:
            out, consumed = inflate_raw(deflate, declared, declared)
        else:
            out = into(declared)
            consumed = inflate_raw_into(deflate, out, declared)[1]
    except MemberError as exc:
        raise fail(f"cannot inflate: {exc}") from None
    if consumed != len(deflate):
        raise fail(f"{len(deflate) - consumed} unexpected bytes after the deflate stream")
    return out


def member_end(mv: memoryview, pos: int) -> tuple[fmt.Subfield, int]:
    """The subfield and end offset of the whole member at `pos` of `mv`, found by inflating it
    (no index needed: salvage and a resumed backup walk members this way); IntegrityError when
    it is torn or its declared size is impossible."""
    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"offset {pos}: {msg}")

    sub = fmt.parse_member_head(mv[pos:], f"offset {pos}")
    return sub, _inflate_at(mv, pos, sub, fail)[1]


STORED_MAX = 65535  # bytes of data per stored deflate block
_STORED_HEAD = struct.Struct("<BHH")


def sealed_layout_length(sub: fmt.Subfield) -> int:
    """The length of a sealed member (docs/FORMAT.md §11.4, precisions) of subfield `sub`:
    the tar header's stored block, then ``padded(data_len)`` bytes in stored blocks of 65535
    (the last one shorter), then the CRC-32 and ISIZE."""
    p = fmt.padded(sub.data_len)
    return (sub.deflate_offset + len(fmt.STORED_TAR_PREFIX) + fmt.TAR_BLOCK
            + 5 * max(1, -(-p // STORED_MAX)) + p + 8)


def sealed_pieces(
    buf: bytes | memoryview,
    where: str,
    *,
    expected_type: int,
    expected_name: bytes,
    chunk: int | None = None,
    part: str | None = None,
    version: int | None = None,
    flags: int | None = None,
    gzip_crc: bool = True,
) -> tuple[fmt.Subfield, list[memoryview]]:
    """A sealed member's subfield and its tar entry's data (``ciphertext || tag``, §11.4) as
    views of `buf`, one per stored deflate block, nothing copied: the checks of
    ``decode_member`` (head, block headers, CRC-32, ISIZE, tar header, zero padding) made
    in place; the caller authenticates the data. A member not in the writer's layout (the
    §11.4 precisions) goes through ``decode_member``: one view of its inflated data.
    ``gzip_crc=False`` skips the CRC-32 of the stored blocks, for a caller that has checked
    these very bytes against the index's member XXH3 (restore): it adds nothing then, and
    the tag authenticates the data; verify keeps it, the archive must pass ``gzip -t``.
    Raises IntegrityError naming `where` (and `chunk`/`part`) on any mismatch."""
    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"{where}: {msg}", chunk=chunk, part=part)

    mv = memoryview(buf)
    try:
        sub = fmt.parse_member_head(mv, where)
    except IntegrityError as exc:
        exc.chunk, exc.part = chunk, part
        raise
    _check_head(sub, fail, expected_type, version, flags)
    pieces = _stored_pieces(mv, sub, fail, expected_name, gzip_crc)
    if pieces is None:
        sub, data = decode_member(mv, where, expected_type=expected_type,
                                  expected_name=expected_name, chunk=chunk, part=part,
                                  version=version, flags=flags)
        return sub, [data]
    return sub, pieces


def _stored_pieces(mv: memoryview, sub: fmt.Subfield, fail: Callable[[str], IntegrityError],
                   expected_name: bytes, gzip_crc: bool) -> list[memoryview] | None:
    """``sealed_pieces`` in place; None when the member's deflate stream is not laid out as
    the writer lays it out (a length or block header differs; the general inflate decides)."""
    d = sub.deflate_offset
    end = d + len(fmt.STORED_TAR_PREFIX) + fmt.TAR_BLOCK
    if (len(mv) != sealed_layout_length(sub)
            or mv[d : d + len(fmt.STORED_TAR_PREFIX)] != fmt.STORED_TAR_PREFIX):
        return None
    left = fmt.padded(sub.data_len)
    blocks: list[memoryview] = []
    pos = end
    while True:  # one turn per 64 KiB stored block
        n = left if left < STORED_MAX else STORED_MAX
        left -= n
        if mv[pos : pos + 5] != _STORED_HEAD.pack(not left, n, n ^ 0xFFFF):
            return None
        blocks.append(mv[pos + 5 : pos + 5 + n])
        pos += 5 + n
        if not left:
            break
    header = mv[end - fmt.TAR_BLOCK : end]
    want_crc, isize = _TAIL.unpack_from(mv, pos)
    if gzip_crc:
        crc = crc32(header)
        for block in blocks:
            crc = crc32(block, crc)
        if crc != want_crc:
            raise fail("CRC-32 mismatch")
    if isize != (fmt.TAR_BLOCK + fmt.padded(sub.data_len)) & 0xFFFFFFFF:
        raise fail(f"ISIZE {isize} does not match the declared size")
    check_tar_header(header, sub, expected_name, fail)
    pieces: list[memoryview] = []
    data_left = sub.data_len
    for block in blocks:
        n = len(block)
        if data_left >= n:
            pieces.append(block)
        else:
            if data_left:
                pieces.append(block[:data_left])
            if block[data_left:] != bytes(n - data_left):
                raise fail("non-zero tar padding")
        data_left = max(0, data_left - n)
    return pieces
