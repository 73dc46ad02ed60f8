"""An archive as a list of members that can be changed and written back with every checksum
and table made consistent again (docs/FORMAT.md §1-§11), so that a mutation reaches the checks
behind the checksums. Used by benchmarks/fuzz_archives.py only."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from dsbackup._ext.checksum import Xxh3_128, crc32, xxh3_64
from dsbackup._ext.compress import tar_header
from dsbackup.archive import format as fmt

U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
ENTRY = 88
CATALOG = 40


@dataclass
class Member:
    mtype: int
    seq: int | None          # chunk/catalog seq, page number; None for single members
    raw: bytes               # the member's bytes as they will be written (when not dirty)
    data: bytes | None       # the tar entry's data (None: not decoded, e.g. a sealed member)
    records: int = 0
    version: int = 1
    flags: int = 0
    dirty: bool = False
    tar_name: bytes | None = None   # a hostile tar name (None: the expected one)
    tar_type: bytes = b"0"
    stored: bool = False     # re-encode with stored blocks (zstd chunks, tables)
    pinned: set[int] = field(default_factory=set)  # data offsets the fix-up must not write
    sealed: bool = False     # `data` is the plaintext of a sealed member (sealed on write)

    def expected_name(self) -> bytes:
        t = self.mtype
        if t == fmt.TYPE_CHUNK:
            return fmt.chunk_name(self.seq)
        if t == fmt.TYPE_CATALOG:
            return fmt.catalog_name(self.seq)
        if t == fmt.TYPE_PAGE:
            return fmt.page_name(self.seq)
        return {fmt.TYPE_MANIFEST: fmt.MANIFEST_NAME, fmt.TYPE_INDEX: fmt.INDEX_NAME,
                fmt.TYPE_SUMMARY: fmt.SUMMARY_NAME, fmt.TYPE_NODE: fmt.NODE_NAME,
                fmt.TYPE_KEY: fmt.KEY_NAME}[t]

    def put(self, off: int, value: int, size: int = 8) -> None:
        """Write an integer field of the data unless a mutation pinned it."""
        if off in self.pinned or self.data is None or off + size > len(self.data):
            return
        new = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if self.data[off:off + size] == new:
            return
        b = bytearray(self.data)
        b[off:off + size] = new
        self.data = bytes(b)
        self.dirty = True

    def get(self, off: int, size: int = 8) -> int:
        return int.from_bytes(self.data[off:off + size], "little")


def _stored_blocks(data: bytes, final: bool = True) -> bytes:
    out = bytearray()
    pieces = [data[i:i + 65535] for i in range(0, len(data), 65535)] or [b""]
    for i, p in enumerate(pieces):
        last = final and i == len(pieces) - 1
        out += bytes([1 if last else 0]) + U32.pack(len(p) | ((~len(p) & 0xFFFF) << 16))[:4]
        out += p
    return bytes(out)


def encode_member(m: Member, level: int = 6) -> bytes:
    data = m.data or b""
    pad = bytes(fmt.padded(len(data)) - len(data))
    hdr = bytearray(tar_header(m.tar_name or m.expected_name(), len(data), 0))
    if m.tar_type != b"0":
        hdr[156:157] = m.tar_type
        hdr[148:156] = b"        "
        hdr[148:156] = b"%06o\x00 " % (sum(hdr) & 0o777777)
    hdr = bytes(hdr)
    body = data + pad
    if m.stored:
        deflate = _stored_blocks(body)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        deflate = c.compress(body) + c.flush()
    if m.mtype == fmt.TYPE_CHUNK:
        sub = fmt.chunk_subfield(m.seq, m.records, len(data), xxh3_64(data), m.version, m.flags)
    else:
        sub = fmt.data_subfield(m.mtype, len(data), xxh3_64(data), m.version, m.flags)
    crc = crc32(hdr + body)
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + deflate
            + fmt.member_tail(crc, 512 + len(body)))


class Sealer:
    """AES-256-GCM of one archive's members under its data key (docs/FORMAT.md §11.4), for
    archives whose key file the fuzzer holds (a raw key: kdf "raw"). Epoch 0 only."""

    def __init__(self, key_header: bytes, raw_key: bytes, version: int) -> None:
        import json

        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        h = json.loads(key_header)
        self.aid = bytes.fromhex(h["archive_id"])
        w = bytes.fromhex(h["wrapped_key"])
        dk = AESGCM(raw_key).decrypt(w[:12], w[12:], b"dsbackup-key-v1" + self.aid)
        self.aead = AESGCM(dk)
        self.version = version

    def _na(self, mtype: int, seq: int, n: int) -> tuple[bytes, bytes]:
        nonce = bytes((mtype,)) + bytes(3) + U64.pack(seq)
        aad = self.aid + bytes((self.version, mtype)) + bytes(3) + U64.pack(seq) + U64.pack(n)
        return nonce, aad

    def open(self, mtype: int, seq: int, sealed: bytes) -> bytes:
        nonce, aad = self._na(mtype, seq, len(sealed) - 16)
        return self.aead.decrypt(nonce, sealed, aad)

    def seal(self, mtype: int, seq: int, plain: bytes) -> bytes:
        nonce, aad = self._na(mtype, seq, len(plain))
        return self.aead.encrypt(nonce, plain, aad)


@dataclass
class Archive:
    members: list[Member]
    trailer: fmt.Trailer
    sealer: Sealer | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.trailer.flags & fmt.FLAG_ENCRYPTED)

    @property
    def zstd(self) -> bool:
        return bool(self.trailer.flags & fmt.FLAG_ZSTD)

    def find(self, mtype: int, seq: int | None = None) -> Member | None:
        for m in self.members:
            if m.mtype == mtype and (seq is None or m.seq == seq):
                return m
        return None

    def of_type(self, mtype: int) -> list[Member]:
        return [m for m in self.members if m.mtype == mtype]


def parse(buf: bytes, raw_key: bytes | None = None) -> Archive:
    """Split a valid archive into members (inflating each to find its end); an encrypted
    one's members are opened with `raw_key` when given."""
    t = fmt.Trailer.decode(buf[-fmt.TRAILER_SIZE:], len(buf))
    members = []
    off = 0
    end = len(buf) - fmt.TRAILER_SIZE
    while off < end:
        sub = fmt.parse_member_head(memoryview(buf)[off:off + 200], f"member at {off}")
        d = zlib.decompressobj(-15)
        rest = buf[off + sub.deflate_offset:end]
        plain = d.decompress(rest)
        used = len(rest) - len(d.unused_data)
        mlen = sub.deflate_offset + used + 8
        raw = buf[off:off + mlen]
        data = plain[512:512 + sub.data_len]
        seq = sub.seq
        if sub.member_type in (fmt.TYPE_CATALOG, fmt.TYPE_PAGE):
            seq = int(plain[:100].rstrip(b"\0").rsplit(b"/", 1)[1])
        stored = sub.member_type in (fmt.TYPE_INDEX, fmt.TYPE_PAGE, fmt.TYPE_KEY) or bool(
            sub.flags & (fmt.FLAG_ENCRYPTED | fmt.FLAG_ZSTD)) and sub.member_type == fmt.TYPE_CHUNK
        members.append(Member(sub.member_type, seq, raw, data, sub.records or 0, sub.version,
                              sub.flags, stored=stored or bool(sub.flags & fmt.FLAG_ENCRYPTED)))
        off += mlen
    a = Archive(members, t)
    if a.encrypted and raw_key is not None and members and members[0].mtype == fmt.TYPE_KEY:
        a.sealer = Sealer(members[0].data, raw_key, t.version)
        for m in members[1:]:
            m.data = a.sealer.open(m.mtype, m.seq if m.seq is not None else 0, m.data)
            m.sealed = True
    return a


def _layout(a: Archive) -> list[int]:
    offs, off = [], 0
    for m in a.members:
        if m.dirty:
            if m.sealed:
                plain = m.data
                m.data = a.sealer.seal(m.mtype, m.seq if m.seq is not None else 0, plain)
                m.stored = True
                m.raw = encode_member(m)
                m.data = plain
            else:
                m.raw = encode_member(m)
            m.dirty = False
        offs.append(off)
        off += len(m.raw)
    return offs


def _fix_entries(tab: Member, base: int, count: int, cat_base: int, cat_count: int,
                 where: dict[tuple[int, int], tuple[int, int, int]]) -> None:
    for i in range(count):
        e = base + i * ENTRY
        if e + ENTRY > len(tab.data):
            return
        seq, flags = tab.get(e), tab.get(e + 80, 4)
        if flags & 1:
            continue
        loc = where.get((fmt.TYPE_CHUNK, seq))
        if loc:
            tab.put(e + 8, loc[0])
            tab.put(e + 16, loc[1])
            tab.put(e + 48, loc[2])
    for i in range(cat_count):
        c = cat_base + i * CATALOG
        if c + CATALOG > len(tab.data) or base + i * ENTRY + ENTRY > len(tab.data):
            return
        seq = tab.get(base + i * ENTRY)
        if tab.get(base + i * ENTRY + 80, 4) & 1:
            continue
        loc = where.get((fmt.TYPE_CATALOG, seq))
        if loc:
            tab.put(c, loc[0])
            tab.put(c + 8, loc[1])
            tab.put(c + 16, loc[2])


def serialize(a: Archive, fix: bool = True) -> bytes:
    """The archive's bytes; with `fix`, every table field that locates or hashes a member is
    recomputed (except pinned ones) so only the mutation itself is inconsistent. Plaintext
    archives only (a sealed member cannot be re-encoded without its key)."""
    if fix and (not a.encrypted or a.sealer is not None):
        for _ in range(3):  # tables move when pages before them change length
            offs = _layout(a)
            where = {}
            for m, o in zip(a.members, offs):
                if m.seq is not None:
                    where[(m.mtype, m.seq)] = (o, len(m.raw), xxh3_64(m.raw))
            man = a.find(fmt.TYPE_MANIFEST)
            node = a.find(fmt.TYPE_NODE)
            idx = a.find(fmt.TYPE_INDEX)
            mlen = len(man.raw) if man else 0
            mxxh = xxh3_64(man.raw) if man else 0
            node_loc = (offs[a.members.index(node)], len(node.raw)) if node else (0, 0)
            for p in a.of_type(fmt.TYPE_PAGE):
                if p.data[:4] != b"DSP1":
                    continue
                count, cats = p.get(24), p.get(40)
                _fix_entries(p, 64, min(count, 1 << 20), 64 + count * ENTRY, min(cats, 1 << 20),
                             where)
            offs = _layout(a)
            where = {}
            for m, o in zip(a.members, offs):
                if m.seq is not None:
                    where[(m.mtype, m.seq)] = (o, len(m.raw), xxh3_64(m.raw))
            if idx is not None and idx.data[:4] == b"DSI1":
                count, cats = idx.get(8), idx.get(40)
                idx.put(24, mlen)
                idx.put(32, mxxh)
                if node:
                    idx.put(48, node_loc[0])
                    idx.put(56, node_loc[1])
                _fix_entries(idx, 64, min(count, 1 << 20), 64 + count * ENTRY,
                             min(cats, 1 << 20), where)
            elif idx is not None and idx.data[:4] == b"DSR1":
                idx.put(32, mlen)
                idx.put(40, mxxh)
                if node:
                    idx.put(48, node_loc[0])
                    idx.put(56, node_loc[1])
                for p in range(min(idx.get(16), 1 << 16)):
                    e = 96 + p * 64
                    loc = where.get((fmt.TYPE_PAGE, p))
                    if loc and e + 64 <= len(idx.data):
                        idx.put(e, loc[0])
                        idx.put(e + 8, loc[1])
                        idx.put(e + 16, loc[2])
        offs = _layout(a)
    else:
        offs = _layout(a)
    out = b"".join(m.raw for m in a.members)
    t = a.trailer
    if fix:
        idx = a.find(fmt.TYPE_INDEX)
        summ = a.find(fmt.TYPE_SUMMARY)
        if idx and summ:
            io = offs[a.members.index(idx)]
            so = offs[a.members.index(summ)]
            t = fmt.Trailer(io, len(idx.raw), xxh3_64(idx.raw), so, len(summ.raw),
                            xxh3_64(summ.raw), a.trailer.chunk_count, len(out), t.version,
                            t.flags)
        else:
            t = fmt.Trailer(t.index_offset, t.index_length, t.index_xxh3, t.summary_offset,
                            t.summary_length, t.summary_xxh3, t.chunk_count, len(out),
                            t.version, t.flags)
    return out + t.encode()


# -- chunk payloads (§4), leniently: a mutated payload may break every rule ---------------------


def uvarint(n: int) -> bytes:
    return fmt.write_uvarint(n)


def parse_records(payload: bytes) -> list[tuple[bytes, bytes]] | None:
    if payload[:4] != b"DSC1":
        return None
    pos, out = 16, []
    mv = memoryview(payload)
    try:
        while pos < len(payload):
            pos += 1
            kl, pos = fmt.read_uvarint(mv, pos, "p")
            vl, pos = fmt.read_uvarint(mv, pos, "p")
            out.append((payload[pos:pos + kl], payload[pos + kl:pos + kl + vl]))
            pos += kl + vl
    except Exception:  # noqa: BLE001
        return None
    return out


def encode_records(recs: list[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    body = b"".join(b"\0" + uvarint(len(k)) + uvarint(len(v)) + k + v for k, v in recs)
    return b"DSC1" + bytes(4) + U64.pack(len(recs) if count is None else count) + body


def keys_digest(recs: list[tuple[bytes, bytes]]) -> int:
    return xxh3_64(b"".join(U32.pack(len(k)) + k for k, _ in recs))


def fingerprint(pxxh: list[int], parent_fp: str | None = None) -> str:
    h = Xxh3_128()
    for x in pxxh:
        h.update(U64.pack(x))
    if parent_fp:
        h.update(bytes.fromhex(parent_fp))
    return h.hexdigest()
