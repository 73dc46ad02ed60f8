"""Byte layouts of archive format versions 1 and 2 (§11.1/§11.2: the node member). docs/FORMAT.md
is the normative description."""

from __future__ import annotations

import struct

from dsbackup._ext.checksum import xxh3_64
from dsbackup._plain import Frozen
from dsbackup.errors import IntegrityError, UnsupportedArchive

FORMAT_VERSION = 1
# Version 2 is written only when an archive carries the node member (docs/FORMAT.md §11.1).
NODE_FORMAT_VERSION = 2
KNOWN_VERSIONS = (1, 2)
# Version-2 subfield flags: encrypted (§11.4), paged index (§11.3) and zstd chunks (§11.6),
# read and written.
FLAG_ENCRYPTED = 1
FLAG_PAGED = 2
FLAG_ZSTD = 4
KNOWN_FLAGS = FLAG_ENCRYPTED | FLAG_PAGED | FLAG_ZSTD

# gzip member header: ID1 ID2 CM FLG(FEXTRA) MTIME(0) XFL(0) OS(255)
GZIP_HEAD = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
SUBFIELD_ID = b"DS"

TYPE_MANIFEST = 1
TYPE_CHUNK = 2
TYPE_INDEX = 3
TYPE_SUMMARY = 4
TYPE_TRAILER = 5
TYPE_CATALOG = 6
TYPE_NODE = 7
TYPE_PAGE = 8
TYPE_KEY = 9
TYPE_NAMES = {
    TYPE_MANIFEST: "manifest",
    TYPE_CHUNK: "chunk",
    TYPE_INDEX: "index",
    TYPE_SUMMARY: "summary",
    TYPE_TRAILER: "trailer",
    TYPE_CATALOG: "catalog",
    TYPE_NODE: "node",
    TYPE_PAGE: "index page",
    TYPE_KEY: "key header",
}

MANIFEST_NAME = b"dsbackup/manifest.json"
INDEX_NAME = b"dsbackup/index"
SUMMARY_NAME = b"dsbackup/summary.json"
NODE_NAME = b"dsbackup/node"
KEY_NAME = b"dsbackup/key"
MAX_KEY_HEADER = 4096  # bytes of key header JSON (§11.4)

TAR_BLOCK = 512
STORED_TAR_PREFIX = b"\x00\x00\x02\xff\xfd"  # non-final stored block, LEN=512, NLEN=~512
MAX_JSON_BYTES = 16 << 20
MAX_KEY_BYTES = 65535
DEFLATE_MAX_RATIO = 1032

# Subfield layouts (after the 4-byte common prefix, before the 8-byte check).
_COMMON = struct.Struct("<BBH")
_CHUNK_FIELDS = struct.Struct("<QQQQ")  # seq, record count, payload length, payload XXH3
_DATA_FIELDS = struct.Struct("<QQ")  # data length, data XXH3
_TRAILER_FIELDS = struct.Struct("<QQQQQQQQ")
_CHECK = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_U32x2 = struct.Struct("<II")

CHUNK_SUBLEN = _COMMON.size + _CHUNK_FIELDS.size + _CHECK.size  # 44
DATA_SUBLEN = _COMMON.size + _DATA_FIELDS.size + _CHECK.size  # 28
TRAILER_SUBLEN = _COMMON.size + _TRAILER_FIELDS.size + _CHECK.size  # 76
SUBFIELD_OFFSET = 16  # gzip head (10) + XLEN (2) + SI1 SI2 SUBLEN (4)

TRAILER_STORED = b"\x01\x00\x04\xff\xfb"
TRAILER_CRC = 0xEFB5AF2E  # CRC-32 of 1024 zero bytes
TRAILER_SIZE = SUBFIELD_OFFSET + TRAILER_SUBLEN + len(TRAILER_STORED) + 1024 + 8  # 1129


def chunk_name(seq: int) -> bytes:
    return b"dsbackup/chunks/%08d" % seq


def catalog_name(seq: int) -> bytes:
    return b"dsbackup/catalog/%08d" % seq


def page_name(page: int) -> bytes:
    """Tar entry of index page `page` (§11.3)."""
    return b"dsbackup/pages/%08d" % page


def padded(n: int) -> int:
    return (n + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK


def _with_check(body: bytes) -> bytes:
    return body + _CHECK.pack(xxh3_64(body))


def chunk_subfield(seq: int, records: int, payload_len: int, payload_xxh3: int,
                   version: int = FORMAT_VERSION, flags: int = 0) -> bytes:
    return _with_check(
        _COMMON.pack(version, TYPE_CHUNK, flags)
        + _CHUNK_FIELDS.pack(seq, records, payload_len, payload_xxh3)
    )


def data_subfield(member_type: int, data_len: int, data_xxh3: int,
                  version: int = FORMAT_VERSION, flags: int = 0) -> bytes:
    return _with_check(
        _COMMON.pack(version, member_type, flags) + _DATA_FIELDS.pack(data_len, data_xxh3)
    )


def member_head(subfield: bytes) -> bytes:
    """gzip header with the FEXTRA field holding one `DS` subfield."""
    return (
        GZIP_HEAD
        + _U16.pack(4 + len(subfield))
        + SUBFIELD_ID
        + _U16.pack(len(subfield))
        + subfield
    )


def member_tail(crc: int, isize: int) -> bytes:
    return _U32x2.pack(crc & 0xFFFFFFFF, isize & 0xFFFFFFFF)


class Subfield(Frozen):
    """A parsed `DS` subfield. For chunks `data_len` is the payload length; `deflate_offset`
    is the offset of the deflate stream inside the member."""

    __slots__ = ("member_type", "seq", "records", "data_len", "data_xxh3", "deflate_offset",
                 "version", "flags")
    member_type: int
    seq: int | None
    records: int | None
    data_len: int
    data_xxh3: int
    deflate_offset: int
    version: int
    flags: int

    def __init__(self, member_type: int, seq: int | None, records: int | None, data_len: int,
                 data_xxh3: int, deflate_offset: int, version: int = FORMAT_VERSION,
                 flags: int = 0) -> None:
        self._set(member_type, seq, records, data_len, data_xxh3, deflate_offset, version,
                  flags)


def check_version(where: str, version: int, flags: int) -> None:
    """Refuse a version or version-2 feature this build does not read (exit 2:
    a well-formed archive of another kind, not damage: the subfield's check has passed);
    flag bits in a version-1 member are damage."""
    if version not in KNOWN_VERSIONS:
        raise UnsupportedArchive(f"{where}: unsupported format version {version}")
    if version == 1:
        if flags != 0:
            raise IntegrityError(f"{where}: unknown subfield flags {flags:#x}")
        return
    if flags & ~KNOWN_FLAGS:
        raise UnsupportedArchive(f"{where}: unsupported format feature: unknown subfield "
                                 f"flags {flags & ~KNOWN_FLAGS:#x}")


def key_header_length(data_len: int) -> int:
    """Length of a key header member: always stored blocks, one block for the data (§11.4)."""
    return (SUBFIELD_OFFSET + DATA_SUBLEN + len(STORED_TAR_PREFIX) + TAR_BLOCK + 5
            + padded(data_len) + 8)


def parse_member_head(buf, where: str) -> Subfield:
    """Parse and check a member's gzip header and `DS` subfield (types 1, 2, 3, 4, 6-9)."""
    n = len(buf)
    if n < SUBFIELD_OFFSET:
        raise IntegrityError(f"{where}: member too short for a gzip header ({n} bytes)")
    if bytes(buf[:10]) != GZIP_HEAD:
        raise IntegrityError(f"{where}: bad gzip member header {bytes(buf[:10]).hex()}")
    (xlen,) = _U16.unpack_from(buf, 10)
    if bytes(buf[12:14]) != SUBFIELD_ID:
        raise IntegrityError(f"{where}: extra field is not a DS subfield")
    (sublen,) = _U16.unpack_from(buf, 14)
    if xlen != sublen + 4 or sublen not in (CHUNK_SUBLEN, DATA_SUBLEN):
        raise IntegrityError(f"{where}: bad extra field lengths XLEN={xlen} SUBLEN={sublen}")
    if n < SUBFIELD_OFFSET + sublen + 8:
        raise IntegrityError(f"{where}: member truncated inside its header")
    sub = bytes(buf[SUBFIELD_OFFSET : SUBFIELD_OFFSET + sublen])
    (check,) = _CHECK.unpack_from(sub, sublen - 8)
    if xxh3_64(sub[:-8]) != check:
        raise IntegrityError(f"{where}: subfield checksum mismatch")
    version, mtype, flags = _COMMON.unpack_from(sub, 0)
    check_version(where, version, flags)
    deflate_offset = SUBFIELD_OFFSET + sublen
    if mtype == TYPE_CHUNK:
        if sublen != CHUNK_SUBLEN:
            raise IntegrityError(f"{where}: chunk subfield has length {sublen}")
        seq, records, plen, pxxh = _CHUNK_FIELDS.unpack_from(sub, 4)
        return Subfield(mtype, seq, records, plen, pxxh, deflate_offset, version, flags)
    if mtype in (TYPE_NODE, TYPE_KEY, TYPE_PAGE) and version < NODE_FORMAT_VERSION:
        raise IntegrityError(f"{where}: a {TYPE_NAMES[mtype]} member in a version-{version} "
                             "archive")
    if mtype == TYPE_KEY and not flags & FLAG_ENCRYPTED:
        raise IntegrityError(f"{where}: a key header in an archive not flagged encrypted")
    if mtype == TYPE_PAGE and not flags & FLAG_PAGED:
        raise IntegrityError(f"{where}: an index page in an archive not flagged paged")
    if mtype in (TYPE_MANIFEST, TYPE_INDEX, TYPE_SUMMARY, TYPE_CATALOG, TYPE_NODE, TYPE_KEY,
                 TYPE_PAGE):
        if sublen != DATA_SUBLEN:
            raise IntegrityError(f"{where}: {TYPE_NAMES[mtype]} subfield has length {sublen}")
        dlen, dxxh = _DATA_FIELDS.unpack_from(sub, 4)
        return Subfield(mtype, None, None, dlen, dxxh, deflate_offset, version, flags)
    raise IntegrityError(f"{where}: unknown member type {mtype}")


class Trailer(Frozen):
    __slots__ = ("index_offset", "index_length", "index_xxh3", "summary_offset",
                 "summary_length", "summary_xxh3", "chunk_count", "trailer_offset", "version",
                 "flags")
    index_offset: int
    index_length: int
    index_xxh3: int
    summary_offset: int
    summary_length: int
    summary_xxh3: int
    chunk_count: int
    trailer_offset: int
    version: int
    flags: int

    def __init__(self, index_offset: int, index_length: int, index_xxh3: int,
                 summary_offset: int, summary_length: int, summary_xxh3: int,
                 chunk_count: int, trailer_offset: int, version: int = FORMAT_VERSION,
                 flags: int = 0) -> None:
        self._set(index_offset, index_length, index_xxh3, summary_offset, summary_length,
                  summary_xxh3, chunk_count, trailer_offset, version, flags)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    def encode(self) -> bytes:
        sub = _with_check(
            _COMMON.pack(self.version, TYPE_TRAILER, self.flags)
            + _TRAILER_FIELDS.pack(
                self.index_offset,
                self.index_length,
                self.index_xxh3,
                self.summary_offset,
                self.summary_length,
                self.summary_xxh3,
                self.chunk_count,
                self.trailer_offset,
            )
        )
        out = member_head(sub) + TRAILER_STORED + bytes(1024) + member_tail(TRAILER_CRC, 1024)
        assert len(out) == TRAILER_SIZE
        return out

    @classmethod
    def decode(cls, buf: bytes, file_size: int) -> Trailer:
        if len(buf) != TRAILER_SIZE:
            raise IntegrityError(
                f"trailer: archive too short ({file_size} bytes) to hold the "
                f"{TRAILER_SIZE}-byte trailer",
                part="trailer",
            )
        expected_prefix = GZIP_HEAD + _U16.pack(TRAILER_SUBLEN + 4) + SUBFIELD_ID + _U16.pack(
            TRAILER_SUBLEN
        )
        if buf[:SUBFIELD_OFFSET] != expected_prefix:
            raise IntegrityError(
                "trailer: the last 1129 bytes are not a dsbackup trailer (not a dsbackup "
                "archive, truncated, or data appended after the end)",
                part="trailer",
            )
        sub = buf[SUBFIELD_OFFSET : SUBFIELD_OFFSET + TRAILER_SUBLEN]
        (check,) = _CHECK.unpack_from(sub, TRAILER_SUBLEN - 8)
        if xxh3_64(sub[:-8]) != check:
            raise IntegrityError("trailer: checksum mismatch", part="trailer")
        version, mtype, flags = _COMMON.unpack_from(sub, 0)
        if mtype == TYPE_TRAILER:
            check_version("trailer", version, flags)  # another version: exit 2, not damage
        if mtype != TYPE_TRAILER or (flags != 0 and version == 1):
            raise IntegrityError(
                f"trailer: unexpected version/type/flags {version}/{mtype}/{flags}",
                part="trailer",
            )
        tail = buf[SUBFIELD_OFFSET + TRAILER_SUBLEN :]
        if tail != TRAILER_STORED + bytes(1024) + member_tail(TRAILER_CRC, 1024):
            raise IntegrityError("trailer: damaged end-of-archive blocks", part="trailer")
        t = cls(*_TRAILER_FIELDS.unpack_from(sub, 4), version=version, flags=flags)
        if t.trailer_offset != file_size - TRAILER_SIZE:
            raise IntegrityError(
                f"trailer: records archive length {t.trailer_offset + TRAILER_SIZE} but the "
                f"file has {file_size} bytes",
                part="trailer",
            )
        if not (
            t.index_offset > 0
            and t.index_offset + t.index_length == t.summary_offset
            and t.summary_offset + t.summary_length == t.trailer_offset
        ):
            raise IntegrityError(
                "trailer: index/summary locations are inconsistent", part="trailer"
            )
        return t


def read_uvarint(buf: memoryview, pos: int, where: str, part: str | None = None
                 ) -> tuple[int, int]:
    """(value, next position) of the uvarint at `pos`: at most 10 bytes, minimal encoding
    (§4); IntegrityError naming `where` (and `part`) otherwise."""
    n = shift = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise IntegrityError(f"{where}: truncated varint at offset {pos}", part=part)
        b = buf[pos + i]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and i > 0:
                raise IntegrityError(f"{where}: non-minimal varint at offset {pos}", part=part)
            return n, pos + i + 1
        shift += 7
    raise IntegrityError(f"{where}: varint longer than 10 bytes at offset {pos}", part=part)


def write_uvarint(n: int) -> bytes:
    """The minimal uvarint of `n` (§4; the same bytes as multiformats.uvarint, which readers
    of archives do not import: it loads hashlib and OpenSSL)."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
