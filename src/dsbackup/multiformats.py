"""Just enough multiformats for datastore keys: varints, base32, base58btc, multihashes, CIDs.

Written here rather than taken from PyPI: the CID libraries there parse through several layers
of objects and are slow on millions of keys. Semantics follow go-cid / go-multihash /
go-varint, which is what Kubo used to write the keys we read:

- varints are unsigned LEB128, at most 9 bytes, and must be minimally encoded;
- a CID cast from bytes is v0 when it is exactly 34 bytes starting ``0x12 0x20``
  (a sha2-256 multihash); otherwise ``varint(1) varint(codec) multihash`` and the
  bytes must be consumed exactly;
- datastore keys of blocks are base32 (RFC 4648 alphabet, upper case, no padding) of the
  multihash (Kubo >= 0.12) or of the CID bytes (before), as go-ipfs-ds-help wrote them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CID",
    "Multihash",
    "MultiformatError",
    "b32_decode",
    "b32_encode",
    "b58_decode",
    "b58_encode",
    "decode_cid",
    "decode_multihash",
    "hash_function",
    "parse_cid",
    "read_varint",
    "uvarint",
    "write_varint",
]


class MultiformatError(ValueError):
    """Bytes or text that are not a valid varint, multihash, CID or base encoding."""


# -- varints ------------------------------------------------------------------------------

MAX_VARINT_LEN = 9  # go-varint: 63-bit values at most


def write_varint(n: int) -> bytes:
    if n < 0 or n >= 1 << 63:
        raise MultiformatError(f"varint out of range: {n}")
    return uvarint(n)


def uvarint(n: int) -> bytes:
    """Unsigned LEB128, minimal, of any size (the archive's varints, docs/FORMAT.md §4, and
    the multiformats' 63-bit ones: :func:`write_varint` checks that range)."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes, pos: int = 0) -> tuple[int, int]:
    """Decode the varint at ``pos``; return ``(value, next position)``."""
    n = 0
    shift = 0
    end = len(buf)
    i = pos
    while True:
        if i >= end:
            raise MultiformatError("truncated varint")
        if i - pos >= MAX_VARINT_LEN:
            raise MultiformatError("varint longer than 9 bytes")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and i - pos > 1:
                raise MultiformatError("varint not minimally encoded")
            return n, i
        shift += 7


# -- base32 (RFC 4648, no padding) ---------------------------------------------------------

_B32_VALID_TAIL = {0, 2, 4, 5, 7}  # characters in a final partial 8-character group


def b32_encode(data: bytes, *, upper: bool = True) -> str:
    """Base32 without padding; upper case as flatfs keys use it, lower case for multibase ``b``."""
    s = base64.b32encode(data).decode("ascii").rstrip("=")
    return s if upper else s.lower()


def b32_decode(text: str | bytes, *, upper: bool | None = True) -> bytes:
    """Decode unpadded base32. ``upper=True`` accepts only upper case (Go's
    ``base32.RawStdEncoding``), ``False`` only lower case, ``None`` either."""
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise MultiformatError("base32 text is not ASCII") from None
    else:
        raw = bytes(text)
    if upper is False:
        if raw != raw.lower():
            raise MultiformatError("base32 text is not lower case")
        raw = raw.upper()
    elif upper is None:
        raw = raw.upper()
    if len(raw) % 8 not in _B32_VALID_TAIL:
        raise MultiformatError(f"base32 text has an impossible length {len(raw)}")
    if b"=" in raw:
        raise MultiformatError("base32 text is padded")
    try:
        return base64.b32decode(raw + b"=" * (-len(raw) % 8))
    except binascii.Error as exc:
        raise MultiformatError(f"invalid base32: {exc}") from None


# -- base58btc -----------------------------------------------------------------------------

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58_encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, r = divmod(n, 58)
        digits.append(_B58_ALPHABET[r])
    return "1" * zeros + "".join(reversed(digits))


def b58_decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise MultiformatError(f"invalid base58btc character {c!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


# -- multihash -----------------------------------------------------------------------------

SHA2_256 = 0x12
DAG_PB = 0x70


@dataclass(frozen=True, slots=True)
class Multihash:
    code: int
    digest: bytes

    @property
    def bytes(self) -> bytes:
        return write_varint(self.code) + write_varint(len(self.digest)) + self.digest

    @property
    def name(self) -> str:
        return _HASH_NAMES.get(self.code, f"0x{self.code:x}")

    def verify(self, data: bytes) -> bool:
        """True when ``data`` hashes to this multihash (truncated digests compare a prefix)."""
        fn = hash_function(self.code, len(self.digest))
        full = fn(data)
        return len(self.digest) <= len(full) and full[: len(self.digest)] == self.digest


def _read_multihash(buf: bytes, pos: int) -> tuple[Multihash, int]:
    code, pos = read_varint(buf, pos)
    length, pos = read_varint(buf, pos)
    if pos + length > len(buf):
        raise MultiformatError(f"multihash digest truncated: wants {length} bytes, "
                               f"has {len(buf) - pos}")
    return Multihash(code, bytes(buf[pos:pos + length])), pos + length


def decode_multihash(buf: bytes) -> Multihash:
    """Parse a multihash that must span all of ``buf``."""
    mh, end = _read_multihash(buf, 0)
    if end != len(buf):
        raise MultiformatError(f"{len(buf) - end} trailing bytes after multihash")
    return mh


def _hashlib(name: str, **kw: int) -> Callable[[bytes], bytes]:
    def fn(data: bytes) -> bytes:
        return hashlib.new(name, data, **kw).digest()
    return fn


def _blake2(kind: str, size: int) -> Callable[[bytes], bytes]:
    ctor = hashlib.blake2b if kind == "b" else hashlib.blake2s

    def fn(data: bytes) -> bytes:
        return ctor(data, digest_size=size).digest()
    return fn


_HASHES: dict[int, Callable[[bytes], bytes]] = {
    0x00: lambda data: bytes(data),                 # identity
    0x11: _hashlib("sha1"),
    0x12: _hashlib("sha256"),
    0x13: _hashlib("sha512"),
    0x14: _hashlib("sha3_512"),
    0x15: _hashlib("sha3_384"),
    0x16: _hashlib("sha3_256"),
    0x17: _hashlib("sha3_224"),
    0x20: _hashlib("sha384"),
    0xD5: _hashlib("md5"),
    0x1013: _hashlib("sha224"),
}
_HASH_NAMES = {0x00: "identity", 0x11: "sha1", 0x12: "sha2-256", 0x13: "sha2-512",
               0x14: "sha3-512", 0x15: "sha3-384", 0x16: "sha3-256", 0x17: "sha3-224",
               0x20: "sha2-384", 0xD5: "md5", 0x1013: "sha2-224"}
for _i in range(1, 65):  # blake2b-8 .. blake2b-512: 0xb201 .. 0xb240
    _HASHES[0xB200 + _i] = _blake2("b", _i)
    _HASH_NAMES[0xB200 + _i] = f"blake2b-{_i * 8}"
for _i in range(1, 33):  # blake2s-8 .. blake2s-256: 0xb241 .. 0xb260
    _HASHES[0xB240 + _i] = _blake2("s", _i)
    _HASH_NAMES[0xB240 + _i] = f"blake2s-{_i * 8}"


def hash_function(code: int, length: int | None = None) -> Callable[[bytes], bytes]:
    """The function computing digests for multihash ``code``; raises for unsupported ones."""
    try:
        return _HASHES[code]
    except KeyError:
        raise MultiformatError(f"unsupported multihash function 0x{code:x}") from None


# -- CID -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CID:
    version: int
    codec: int
    multihash: Multihash

    @property
    def bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash.bytes
        return write_varint(1) + write_varint(self.codec) + self.multihash.bytes

    def __str__(self) -> str:
        if self.version == 0:
            return b58_encode(self.bytes)
        return "b" + b32_encode(self.bytes, upper=False)


def decode_cid(buf: bytes) -> CID:
    """Parse binary CID bytes exactly as go-cid's ``Cast`` does."""
    if len(buf) == 34 and buf[0] == SHA2_256 and buf[1] == 32:
        return CID(0, DAG_PB, Multihash(SHA2_256, bytes(buf[2:])))
    version, pos = read_varint(buf, 0)
    if version != 1:
        raise MultiformatError(f"invalid CID version {version}")
    codec, pos = read_varint(buf, pos)
    mh, pos = _read_multihash(buf, pos)
    if pos != len(buf):
        raise MultiformatError(f"{len(buf) - pos} trailing bytes after CID")
    return CID(1, codec, mh)


def parse_cid(text: str) -> CID:
    """Parse a CID string: base58btc v0 (``Qm...``) or multibase ``b``/``B`` (base32)
    or ``z`` (base58btc) v1."""
    if len(text) == 46 and text.startswith("Qm"):
        cid = decode_cid(b58_decode(text))
        if cid.version != 0:
            raise MultiformatError(f"{text!r} is not a CIDv0")
        return cid
    if not text:
        raise MultiformatError("empty CID")
    prefix, body = text[0], text[1:]
    if prefix == "b":
        raw = b32_decode(body, upper=False)
    elif prefix == "B":
        raw = b32_decode(body, upper=True)
    elif prefix == "z":
        raw = b58_decode(body)
    else:
        raise MultiformatError(f"unsupported multibase prefix {prefix!r} in {text!r}")
    cid = decode_cid(raw)
    if cid.version == 0:
        raise MultiformatError(f"{text!r}: a CIDv0 must be written in plain base58btc")
    return cid
