"""Mutations of an archive, raw (bytes) and structural (members re-encoded with every checksum
right, so that only the lie itself is left to find). Used by benchmarks/fuzz_archives.py."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import zlib

from dsbackup.archive import format as fmt
from fuzzlib import model
from fuzzlib.model import CATALOG, ENTRY, U64, Archive, Member

INTERESTING = [0, 1, 2, 7, 0xFF, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
               2**63 - 1, 2**63, 2**64 - 1, 2**64 - 2]


def _zstd(data: bytes, *extra: str) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", "--no-check", *extra], input=data,
                          capture_output=True, check=True).stdout


def _unzstd(frame: bytes) -> bytes | None:
    r = subprocess.run(["zstd", "-q", "-d", "-c"], input=frame, capture_output=True)
    return r.stdout if r.returncode == 0 else None


class Mutator:
    def __init__(self, rng: random.Random, buf: bytes, size_hint: int) -> None:
        self.rng = rng
        self.buf = buf
        self.size = size_hint

    def value(self, old: int = 0, own: int = 0) -> int:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(INTERESTING)
        if r < 0.55:
            return (old + self.rng.choice([-2, -1, 1, 2, 512, -512])) % 2**64
        if r < 0.7:
            return self.rng.choice([self.size, self.size - 1, self.size * 10, self.size - 1129,
                                    self.size + 1])
        if r < 0.85:
            return own  # a field pointing at its own member
        return self.rng.randrange(0, 2**64)

    # -- raw ------------------------------------------------------------------------------

    def raw(self) -> tuple[bytes, str]:
        b = bytearray(self.buf)
        rng = self.rng
        op = rng.choice(["flip", "flip", "set", "truncate", "append", "insert", "delete",
                         "u64", "trailer"])
        if op == "flip":
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(b)) if rng.random() < 0.6 else \
                    len(b) - 1 - rng.randrange(min(len(b), 4096))
                b[pos] ^= 1 << rng.randrange(8)
        elif op == "set":
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == "truncate":
            del b[rng.randrange(len(b)):]
        elif op == "append":
            b += rng.choice([b"\0" * rng.randint(1, 2000), bytes(self.buf[-1129:]),
                             zlib.compress(b"x" * 100), rng.randbytes(rng.randint(1, 64))])
        elif op == "insert":
            pos = rng.randrange(len(b))
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete":
            pos = rng.randrange(len(b))
            del b[pos:pos + rng.randint(1, 64)]
        elif op == "u64":
            pos = rng.randrange(max(1, len(b) - 8))
            b[pos:pos + 8] = U64.pack(self.value(int.from_bytes(b[pos:pos + 8], "little")))
        elif op == "trailer":
            t = fmt.Trailer.decode(bytes(b[-1129:]), len(b))
            fields = ["index_offset", "index_length", "index_xxh3", "summary_offset",
                      "summary_length", "summary_xxh3", "chunk_count", "trailer_offset",
                      "version", "flags"]
            name = rng.choice(fields)
            vals = {f: getattr(t, f) for f in fields}
            if name == "version":
                vals[name] = rng.choice([0, 1, 2, 3, 255])
            elif name == "flags":
                vals[name] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 0xFFFF])
            else:
                vals[name] = self.value(vals[name], t.trailer_offset)
            b[-1129:] = fmt.Trailer(**vals).encode()
            return bytes(b), f"trailer.{name}"
        return bytes(b), f"raw.{op}"

    # -- members --------------------------------------------------------------------------

    def members(self, a: Archive) -> str:
        rng = self.rng
        ms = a.members
        op = rng.choice(["drop", "dup", "swap", "move_end"])
        i = rng.randrange(len(ms))
        if op == "drop" and len(ms) > 1:
            del ms[i]
        elif op == "dup":
            ms.insert(rng.randrange(len(ms) + 1), ms[i])
        elif op == "swap":
            j = rng.randrange(len(ms))
            ms[i], ms[j] = ms[j], ms[i]
        else:
            ms.append(ms.pop(i))
        return f"member.{op}.{fmt.TYPE_NAMES.get(ms[min(i, len(ms) - 1)].mtype, '?')}"

    # -- tables (single index, root, pages) ---------------------------------------------

    def table(self, a: Archive) -> str:
        rng = self.rng
        tabs = [m for m in a.members if m.mtype in (fmt.TYPE_INDEX, fmt.TYPE_PAGE)]
        t = rng.choice(tabs)
        magic = t.data[:4]
        own = 0
        if magic == b"DSR1":
            hsize, esize, count = 96, 64, t.get(16)
        elif magic == b"DSP1":
            hsize, esize, count = 64, ENTRY, t.get(24)
        else:
            hsize, esize, count = 64, ENTRY, t.get(8)
        r = rng.random()
        if r < 0.25 or count == 0:
            off = rng.randrange(0, hsize, 8)
            what = f"header@{off}"
        elif r < 0.8:
            i = rng.randrange(count)
            fields = list(range(0, esize, 8)) + ([72, 76, 80, 84] if esize == ENTRY else
                                                 [48, 52])
            f = rng.choice(fields)
            off = hsize + i * esize + f
            what = f"entry{i}@{f}"
        else:
            # catalog entries (after the chunk entries) or the keys blob
            tail = hsize + count * esize
            if tail >= len(t.data):
                return self.table(a) if rng.random() < 0.5 else "table.none"
            off = rng.randrange(tail, len(t.data))
            if rng.random() < 0.5:
                b = bytearray(t.data)
                b[off] = rng.randrange(256) if rng.random() < 0.5 else b[off] ^ 1
                t.data = bytes(b)
                t.dirty = True
                return f"table.{magic.decode(errors='replace')}.tailbyte"
            what = f"tail@{off - tail}"
        size = 4 if (esize == ENTRY and (off - hsize) % esize in (72, 76, 80, 84)
                     and off >= hsize) or (esize == 64 and off >= hsize
                                           and (off - hsize) % 64 in (48, 52)) else 8
        if off + size > len(t.data):
            return "table.none"
        old = t.get(off, size)
        new = self.value(old, own) & ((1 << (8 * size)) - 1)
        if rng.random() < 0.2 and size == 4 and "@80" in what:
            new = old ^ 1  # stored <-> reference
        t.put(off, new, size)
        t.pinned.add(off)
        return f"table.{magic.decode(errors='replace')}.{what}"

    def keys(self, a: Archive) -> str:
        """Rewrite a table's keys blob: unsorted, duplicate, out-of-range first/last keys."""
        rng = self.rng
        tabs = [m for m in a.members if m.mtype == fmt.TYPE_PAGE
                or (m.mtype == fmt.TYPE_INDEX and m.data[:4] == b"DSI1")]
        if not tabs:
            return "keys.none"
        t = rng.choice(tabs)
        paged = t.data[:4] == b"DSP1"
        count = t.get(24 if paged else 8)
        cats = t.get(40)
        blob_off = 64 + count * ENTRY + cats * CATALOG
        keys = []
        for i in range(count):
            e = 64 + i * ENTRY
            ko, fl, ll = t.get(e + 64), t.get(e + 72, 4), t.get(e + 76, 4)
            s = blob_off + ko
            keys.append([t.data[s:s + fl], t.data[s + fl:s + fl + ll]])
        if not keys:
            return "keys.none"
        i = rng.randrange(len(keys))
        op = rng.choice(["dup_prev", "swap", "first_gt_last", "empty", "grow", "prefix_of",
                         "huge"])
        j = max(0, i - 1)
        if op == "dup_prev":
            keys[i][0] = keys[j][1]
        elif op == "swap":
            keys[i], keys[j] = keys[j], keys[i]
        elif op == "first_gt_last":
            keys[i] = [keys[i][1], keys[i][0]]
        elif op == "empty":
            keys[i][rng.randrange(2)] = b""
        elif op == "grow":
            keys[i][1] = keys[i][1] + b"\xff"
        elif op == "prefix_of":
            keys[i][0] = keys[i][0][:1]
        else:
            keys[i][1] = b"/" + b"z" * rng.choice([65535, 65536, 100000])
        blob = bytearray()
        data = bytearray(t.data[:blob_off])
        for n, (f, last) in enumerate(keys):
            e = 64 + n * ENTRY
            struct.pack_into("<QII", data, e + 64, len(blob), len(f), len(last))
            blob += f + last
        struct.pack_into("<Q", data, 32 if paged else 16, len(blob))
        t.data = bytes(data + blob)
        t.dirty = True
        return f"keys.{op}"

    # -- chunk payloads and catalogs ----------------------------------------------------

    def payload(self, a: Archive) -> str:
        rng = self.rng
        chunks = a.of_type(fmt.TYPE_CHUNK)
        if not chunks:
            return "payload.none"
        m = rng.choice(chunks)
        sealed_deflate = m.sealed and not a.zstd  # a sealed chunk holds a raw deflate stream
        if a.zstd:
            payload = _unzstd(m.data)
        elif sealed_deflate:
            plen = _entry_field(a, m.seq, 24)
            payload = None if plen is None else zlib.decompressobj(-15).decompress(m.data)[:plen]
        else:
            payload = m.data
        if payload is None:
            return "payload.none"
        recs = model.parse_records(payload)
        if recs is None:
            return "payload.none"
        op = rng.choice(["swap", "dup", "drop", "value", "key", "count", "op", "trunc",
                         "garbage", "empty_key", "long_key", "varint", "bomb"])
        count = None
        raw_payload = None
        if op == "swap" and len(recs) > 1:
            i = rng.randrange(len(recs) - 1)
            recs[i], recs[i + 1] = recs[i + 1], recs[i]
        elif op == "dup":
            i = rng.randrange(len(recs))
            recs.insert(i, recs[i])
        elif op == "drop" and len(recs) > 1:
            del recs[rng.randrange(len(recs))]
        elif op == "value":
            i = rng.randrange(len(recs))
            recs[i] = (recs[i][0], recs[i][1] + b"!")
        elif op == "key":
            i = rng.randrange(len(recs))
            recs[i] = (rng.choice([b"/zzzz/outside", b"/", recs[i][0] + b"\0", b"\x00"]),
                       recs[i][1])
        elif op == "count":
            count = self.value(len(recs))
        elif op == "empty_key":
            recs[rng.randrange(len(recs))] = (b"", b"v")
        elif op == "long_key":
            recs[-1] = (recs[-1][0] + b"k" * 65536, b"v")
        if op in ("op", "trunc", "garbage", "varint"):
            enc = bytearray(model.encode_records(recs))
            if op == "op":
                enc[16] = rng.choice([1, 2, 255])
            elif op == "trunc":
                del enc[rng.randrange(16, len(enc)):]
            elif op == "garbage":
                enc += rng.randbytes(rng.randint(1, 20))
            else:
                enc[17:18] = bytes([enc[17] | 0x80, 0x00])  # non-minimal key_len
            raw_payload = bytes(enc)
        if op == "bomb":
            raw_payload = None
            size = rng.choice([64 << 20, 512 << 20])
            if a.zstd:
                m.data = BOMBS["zstd_" + str(size)]
            elif sealed_deflate:
                m.data = BOMBS["deflate_" + str(size)]
            else:
                m.data = b"\0" * 100  # placeholder; the member is built by hand below
                m.raw = _deflate_bomb_member(m, size)
                self._sync(a, m, b"\0" * 100, None, rng.randrange(3))
                return f"payload.bomb.{size}"
        else:
            if raw_payload is None:
                raw_payload = model.encode_records(recs, count)
            if a.zstd:
                m.data = _zstd(raw_payload)
            elif sealed_deflate:
                c = zlib.compressobj(6, zlib.DEFLATED, -15)
                m.data = c.compress(raw_payload + bytes(fmt.padded(len(raw_payload))
                                                       - len(raw_payload))) + c.flush()
            else:
                m.data = raw_payload
            if not m.sealed:
                m.records = len(recs) if count is None else count % 2**64
        m.dirty = True
        sync = rng.randrange(3)
        self._sync(a, m, raw_payload if raw_payload is not None else b"", recs, sync)
        return f"payload.{op}.sync{sync}"

    def _sync(self, a: Archive, m: Member, payload: bytes, recs, level: int) -> None:
        """Make the index entry (level >= 1) and the summary (level 2) agree with the new
        payload, as a hostile writer would."""
        if level == 0:
            return
        for t in a.members:
            if t.mtype not in (fmt.TYPE_INDEX, fmt.TYPE_PAGE) or t.data[:4] == b"DSR1":
                continue
            paged = t.data[:4] == b"DSP1"
            count = t.get(24 if paged else 8)
            for i in range(min(count, 1 << 20)):
                e = 64 + i * ENTRY
                if t.get(e) == m.seq and not t.get(e + 80, 4) & 1:
                    t.put(e + 24, len(payload))
                    t.put(e + 40, model.xxh3_64(payload))
                    t.put(e + 32, m.records)
                    if recs:
                        t.put(e + 56, model.keys_digest(recs))
        if level == 2:
            s = a.find(fmt.TYPE_SUMMARY)
            try:
                summ = json.loads(s.data)
                summ["records"] = summ.get("records", 0) + 1 - 1
                s.data = json.dumps(summ).encode()
                s.dirty = True
            except Exception:  # noqa: BLE001
                pass

    def catalog(self, a: Archive) -> str:
        rng = self.rng
        cats = a.of_type(fmt.TYPE_CATALOG)
        if not cats:
            return "catalog.none"
        m = rng.choice(cats)
        b = bytearray(m.data)
        op = rng.choice(["flip", "trunc", "extend", "varint_huge"])
        if op == "flip" and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == "trunc" and b:
            del b[rng.randrange(len(b)):]
        elif op == "extend":
            b += b"\x05/zzzz\x01" + bytes(8)
        else:
            b[0:1] = b"\xff\xff\xff\xff\x0f"
        m.data = bytes(b)
        m.dirty = True
        if rng.random() < 0.6:  # the index's catalog entry agrees (data length and XXH3)
            for t in a.members:
                if t.mtype not in (fmt.TYPE_INDEX, fmt.TYPE_PAGE) or t.data[:4] == b"DSR1":
                    continue
                paged = t.data[:4] == b"DSP1"
                count = t.get(24 if paged else 8)
                ncat = t.get(40)
                for i in range(min(count, ncat, 1 << 20)):
                    if t.get(64 + i * ENTRY) == m.seq:
                        c = 64 + count * ENTRY + i * CATALOG
                        t.put(c + 24, len(m.data))
                        t.put(c + 32, model.xxh3_64(m.data))
        return f"catalog.{op}"

    # -- JSON members ---------------------------------------------------------------------

    def json_member(self, a: Archive) -> str:
        rng = self.rng
        m = rng.choice([x for x in a.members if x.mtype in (fmt.TYPE_MANIFEST,
                                                            fmt.TYPE_SUMMARY)])
        try:
            obj = json.loads(m.data)
        except Exception:  # noqa: BLE001
            return "json.none"
        what = "manifest" if m.mtype == fmt.TYPE_MANIFEST else "summary"
        op = rng.choice(["type", "drop", "nest", "parent", "huge", "notjson", "resumed",
                         "array"])
        key = rng.choice(sorted(obj)) if obj else "x"
        if op == "type":
            obj[key] = rng.choice([5, "x", None, [], {}, -1, 1e308, True, 2**70])
        elif op == "drop":
            obj.pop(key, None)
        elif op == "nest":
            m.data = b'{"format": "dsbackup", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
            m.dirty = True
            return f"json.{what}.nest"
        elif op == "parent" and what == "manifest":
            p = obj.get("parent") or {"fingerprint": "0" * 32, "name": "x"}
            if isinstance(p, dict):
                f = rng.choice(["fingerprint", "name", "path", "index_xxh3"])
                p[f] = rng.choice([None, 5, "", "../../etc/passwd", "/etc/passwd",
                                   "a/b", "z" * 5000, "0" * 32, "g" * 32,
                                   obj.get("parent", {}) and "self",
                                   "\x1b]0;evil\x07", [], {}])
                if p[f] == "self":
                    p[f] = "SELF"
            obj["parent"] = p
        elif op == "huge":
            obj[key] = "x" * rng.choice([1000, 17 << 20])
        elif op == "notjson":
            m.data = rng.choice([b"", b"\xff\xfe", b"[]", b"null", b"1e999999", b'"s"',
                                 b'{"a": NaN}', b'{"format": "dsbackup", "a": 1, "a": 2}'])
            m.dirty = True
            return f"json.{what}.notjson"
        elif op == "resumed" and what == "summary":
            obj["resumed"] = rng.choice([[{"epoch": 2**30, "from_seq": 0, "snapshot": None}],
                                         [{"epoch": 1, "from_seq": -1}], "x", [1],
                                         [{"epoch": 1, "from_seq": 2**64}]])
        elif op == "array":
            obj = [obj]
        m.data = json.dumps(obj).encode()
        m.dirty = True
        return f"json.{what}.{op}.{key}"

    # -- node member ---------------------------------------------------------------------

    def node(self, a: Archive) -> str:
        rng = self.rng
        m = a.find(fmt.TYPE_NODE)
        if m is None:
            return "node.none"
        from dsbackup.archive.node import _FIXED, decode_node
        files = decode_node(m.data, "node")
        ents = [[f.path, f.kind, f.mode, f.mtime_ns, f.data] for f in files]
        op = rng.choice(["dotdot", "abs", "dup", "unsorted", "under_file", "kind", "size",
                         "mode", "nul", "long", "count", "trail", "dot", "backslash",
                         "deep_dotdot", "dir_data"])
        count = None
        i = rng.randrange(len(ents))
        if op == "dotdot":
            ents[i][0] = b"../escape"
        elif op == "deep_dotdot":
            ents[i][0] = b"keystore/../../../escape"
        elif op == "abs":
            ents[i][0] = b"/tmp/escape"
        elif op == "dup":
            ents.insert(i, list(ents[i]))
        elif op == "unsorted" and len(ents) > 1:
            ents[0], ents[-1] = ents[-1], ents[0]
        elif op == "under_file":
            f = next((e for e in ents if e[1] == 0), ents[0])
            ents.append([f[0] + b"/child", 0, 0o600, 0, b"x"])
            ents.sort(key=lambda e: e[0])
        elif op == "kind":
            ents[i][1] = rng.choice([2, 255])
        elif op == "mode":
            ents[i][2] = rng.choice([0o17777, 0xFFFFFFFF, 0o4777])
        elif op == "nul":
            ents[i][0] = b"a\0b"
        elif op == "long":
            ents[i][0] = b"a" * 5000
        elif op == "count":
            count = self.value(len(ents))
        elif op == "dot":
            ents[i][0] = b"./config"
        elif op == "backslash":
            ents[i][0] = b"..\\escape"
        elif op == "dir_data":
            ents[i][1] = 1
        out = bytearray(b"DSN1" + bytes(4) + U64.pack(len(ents) if count is None else count))
        for p, k, mode, mt, data in ents:
            size = len(data)
            if op == "size" and p == ents[i][0]:
                size = self.value(size)
            out += fmt.write_uvarint(len(p)) + p + _FIXED.pack(k % 256, mode % 2**32, mt)
            out += fmt.write_uvarint(size) + data
        if op == "trail":
            out += b"\0"
        m.data = bytes(out)
        m.dirty = True
        return f"node.{op}"

    # -- the key header of an encrypted archive (§11.4) ----------------------------------

    def key_header(self, a: Archive) -> str:
        rng = self.rng
        m = a.find(fmt.TYPE_KEY)
        if m is None:
            return "keyhdr.none"
        h = json.loads(m.data)
        op = rng.choice(["scrypt", "scrypt", "kdf_type", "field", "drop", "hex", "size"])
        if op == "scrypt":
            h["kdf"] = {"name": "scrypt", "salt": rng.choice(["00" * 16, "00" * 15, "zz" * 16]),
                        "n": rng.choice([1 << 14, 1 << 22, 1 << 23, 3, 0, -1, 2**64, "16384",
                                         1.5, True, None]),
                        "r": rng.choice([1, 8, 64, 65, 0, -8, 2**40, "8"]),
                        "p": rng.choice([1, 64, 0, -1, 2**40])}
        elif op == "kdf_type":
            h["kdf"] = rng.choice([None, [], "raw", {"name": "argon2"}, {"name": None}, {}])
        elif op == "field":
            f = rng.choice(sorted(h))
            h[f] = rng.choice([None, 1, [], {}, "", "zz", "00" * 100])
        elif op == "drop":
            h.pop(rng.choice(sorted(h)))
        elif op == "hex":
            f = rng.choice(["archive_id", "wrapped_key", "key_check"])
            h[f] = h[f][:-2] + ("00" if h[f][-2:] != "00" else "11")
        else:
            h["pad"] = "x" * rng.choice([3000, 5000, 17 << 20])
        m.data = json.dumps(h).encode()
        m.stored = True
        m.dirty = True
        return f"keyhdr.{op}"

    # -- tar headers --------------------------------------------------------------------

    def tar(self, a: Archive) -> str:
        rng = self.rng
        m = rng.choice([x for x in a.members if x.data is not None])
        op = rng.choice(["symlink", "hardlink", "dir", "name_dotdot", "name_abs", "name_other"])
        if op == "symlink":
            m.tar_type = b"2"
        elif op == "hardlink":
            m.tar_type = b"1"
        elif op == "dir":
            m.tar_type = b"5"
        elif op == "name_dotdot":
            m.tar_name = b"../../" + m.expected_name()
        elif op == "name_abs":
            m.tar_name = b"/tmp/" + m.expected_name()
        else:
            m.tar_name = rng.choice([fmt.chunk_name(999), fmt.INDEX_NAME, fmt.MANIFEST_NAME])
        m.dirty = True
        return f"tar.{op}.{fmt.TYPE_NAMES.get(m.mtype)}"


def _entry_field(a: Archive, seq: int, off: int) -> int | None:
    """A field of chunk `seq`'s index entry (single index or pages)."""
    for t in a.members:
        if t.mtype not in (fmt.TYPE_INDEX, fmt.TYPE_PAGE) or t.data[:4] == b"DSR1":
            continue
        count = t.get(24 if t.data[:4] == b"DSP1" else 8)
        for i in range(min(count, 1 << 20)):
            e = 64 + i * ENTRY
            if t.get(e) == seq and not t.get(e + 80, 4) & 1:
                return t.get(e + off)
    return None


BOMBS: dict[str, bytes] = {}


def init_bombs() -> None:
    for size in (64 << 20, 512 << 20):
        BOMBS["zstd_" + str(size)] = _zstd(b"\0" * size, "-3")
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        mib = b"\0" * (1 << 20)
        BOMBS["deflate_" + str(size)] = b"".join(c.compress(mib) for _ in range(size >> 20)) \
            + c.flush()


def _deflate_bomb_member(m: Member, size: int) -> bytes:
    """A chunk member declaring a 100-byte payload whose deflate stream inflates to `size`."""
    deflate = BOMBS["deflate_" + str(size)]
    from dsbackup._ext.compress import tar_header
    sub = fmt.chunk_subfield(m.seq, m.records, 100, model.xxh3_64(b"\0" * 100), m.version,
                             m.flags)
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + tar_header(m.expected_name(), 100, 0)
            + deflate + fmt.member_tail(0, 0))


# -- archives of the Go tool (docs/GOFORMAT.md): one gzip stream of one tar --------------------


def go_mutate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    import gzip
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as t:
        members = [(m, t.extractfile(m).read() if m.isfile() else b"") for m in t.getmembers()]
    i = rng.randrange(len(members))
    m, body = members[i]
    op = rng.choice(["json", "json", "meta", "symlink", "hardlink", "dir", "name", "longname",
                     "dup", "drop", "bomb", "pax", "fifo"])
    info = tarfile.TarInfo(m.name)
    info.size, info.mode = len(body), 0o644
    if op == "json":
        try:
            obj = json.loads(body)
        except ValueError:
            obj = {}
        if isinstance(obj, dict) and obj and not m.name.startswith("metadata"):
            k = rng.choice(sorted(obj))
            v = rng.choice(["!!!notbase64", None, 5, [], "A" * 3, "", {"x": 1}])
            obj[rng.choice([k, "", "nokeyslash", "/" + "k" * 70000, k + "\u2028"])] = v
            body = json.dumps(obj).encode()
        else:
            body = rng.choice([b"[" * 100000, b"1e99999", b"\xff", b"{}", b'{"/a": "AAAA"'])
    elif op == "meta":
        mi = next((j for j, (x, _) in enumerate(members) if x.name == "metadata.json"), i)
        m, body = members[mi]
        i = mi
        info = tarfile.TarInfo(m.name)
        try:
            obj = json.loads(body)
            f = rng.choice(sorted(obj))
            obj[f] = rng.choice([None, -1, 2**70, "x", [], {}, 1e308])
            body = json.dumps(obj).encode()
        except ValueError:
            body = b"{"
    elif op == "symlink":
        info.type, info.linkname, body = tarfile.SYMTYPE, "../../../etc/passwd", b""
    elif op == "hardlink":
        info.type, info.linkname, body = tarfile.LNKTYPE, "/etc/passwd", b""
    elif op == "dir":
        info.type, body = tarfile.DIRTYPE, b""
    elif op == "fifo":
        info.type, body = tarfile.FIFOTYPE, b""
    elif op == "name":
        info.name = rng.choice(["../" + m.name, "/tmp/" + m.name, "chunk_-1.chunk",
                                "chunk_99999999999999999999.chunk", "x/../chunk_1.chunk"])
    elif op == "longname":
        info.name = "a/" * 80 + m.name
    elif op == "dup":
        members.insert(i, (m, body))
    elif op == "drop":
        del members[i]
        return _go_write(members, rng), f"go.{op}"
    elif op == "bomb":
        body = b"{" + b" " * (rng.choice([64, 512]) << 20)
    elif op == "pax":
        info.pax_headers = {"path": "../../escape", "size": str(2**40)}
    info.size = len(body)
    members[i] = (info, body)
    return _go_write(members, rng, pax=op == "pax"), f"go.{op}"


def _go_write(members, rng, pax: bool = False) -> bytes:
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    fmt_ = tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT
    with tarfile.open(fileobj=buf, mode="w", format=fmt_) as t:
        for info, body in members:
            if not isinstance(info, tarfile.TarInfo):
                continue
            info.size = len(body) if info.isfile() else 0
            t.addfile(info, io.BytesIO(body) if info.isfile() else None)
    return gzip.compress(buf.getvalue(), compresslevel=rng.choice([1, 6]))
