"""dsbackup._ext.framing: payload encoding, validation, chunk boundaries, key matching."""

import random
import struct
import zlib

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsbackup._ext import compress, framing

FramingError = framing.FramingError

keys_st = st.lists(st.binary(min_size=1, max_size=40), max_size=60, unique=True).map(sorted)


@st.composite
def record_sets(draw):
    keys = draw(keys_st)
    values = [draw(st.binary(max_size=300)) for _ in keys]
    return keys, values


def uvarint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def reference_payload(keys, values) -> bytes:
    body = b"".join(b"\0" + uvarint(len(k)) + uvarint(len(v)) + k + v for k, v in zip(keys, values))
    return b"DSC1" + bytes(4) + struct.pack("<Q", len(keys)) + body


def keys_digest(keys) -> int:
    return xxhash.xxh3_64_intdigest(b"".join(struct.pack("<I", len(k)) + k for k in keys))


def reference_chunks(keys, values, chunk_size, max_bytes):
    """Boundaries of docs/FORMAT.md §4.1, written plainly."""
    chunks, cur, length = [], [], 16
    for k, v in zip(keys, values):
        enc = 1 + len(uvarint(len(k))) + len(uvarint(len(v))) + len(k) + len(v)
        if cur and (xxhash.xxh3_64_intdigest(k) % chunk_size == 0 or length + enc > max_bytes):
            chunks.append(cur)
            cur, length = [], 16
        cur.append((k, v))
        length += enc
    if cur:
        chunks.append(cur)
    return chunks


@given(record_sets())
def test_encode_decode_round_trip(rs):
    keys, values = rs
    payload = framing.encode_records(keys, values)
    assert payload == reference_payload(keys, values)
    assert framing.decode_records(payload) == (keys, values)
    assert framing.decode_records(payload, expect_count=len(keys)) == (keys, values)
    assert framing.decode_keys_sizes(payload) == (keys, [len(v) for v in values])
    info = framing.scan_payload(payload)
    assert info.record_count == len(keys)
    assert info.raw_bytes == sum(map(len, keys)) + sum(map(len, values))
    assert info.keys_xxh3 == keys_digest(keys)
    if keys:
        assert (info.first_key, info.last_key) == (keys[0], keys[-1])


def test_edge_records():
    keys = [b"\x00", b"\x00\x00", b"\x00\xff", b"\xff", b"\xff" * 65535]
    values = [b"", b"v" * 200, bytes(range(256)), b"", b"x"]
    payload = framing.encode_records(keys, values)
    assert framing.decode_records(payload) == (keys, values)
    big = bytes(random.Random(1).randbytes(16 << 20))
    payload = framing.encode_records([b"/big"], [big])
    assert framing.decode_records(payload) == ([b"/big"], [big])
    assert framing.decode_records(framing.encode_records([], [])) == ([], [])


def test_encode_rejects_bad_input():
    with pytest.raises(FramingError, match=r"key 1 \(b'/a'\)"):
        framing.encode_records([b"/b", b"/a"], [b"", b""])
    with pytest.raises(FramingError, match="key 1"):
        framing.encode_records([b"/a", b"/a"], [b"", b""])
    with pytest.raises(FramingError, match="length 0"):
        framing.encode_records([b""], [b""])
    with pytest.raises(FramingError, match="length 65536"):
        framing.encode_records([b"k" * 65536], [b""])
    with pytest.raises(ValueError):
        framing.encode_records([b"/a"], [])


GOOD = reference_payload([b"/a", b"/b/c", b"/d"], [b"1", b"", b"xyz" * 50])


def test_rejects_every_truncation():
    for cut in range(len(GOOD)):
        with pytest.raises(FramingError):
            framing.decode_records(GOOD[:cut])
        with pytest.raises(FramingError):
            framing.scan_payload(GOOD[:cut])


@pytest.mark.parametrize("payload,match", [
    (b"DSC2" + GOOD[4:], "magic"),
    (GOOD[:4] + b"\1\0\0\0" + GOOD[8:], "flags"),
    (GOOD + b"\0", "continues after"),
    (GOOD[:8] + struct.pack("<Q", 2) + GOOD[16:], "continues after"),
    (GOOD[:8] + struct.pack("<Q", 4) + GOOD[16:], "declares 4"),
    (reference_payload([], []) + b"junk", "continues after"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x82\x00\x00" + b"ab", "not minimal"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x01\x80\x00" + b"a", "not minimal"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x01" + b"\xff" * 10 + b"\x01a",
     "longer than 10"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x00\x00", "key length 0"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x80\x80\x04\x00" + b"a", "key length 65536"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x05\x00abc", "runs past"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x01\x7fa" + b"v", "runs past"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\0\x01" + b"\xff" * 9 + b"\x01a", "runs past"),
    (b"DSC1" + bytes(4) + struct.pack("<Q", 1) + b"\x01\x01\x00a", "unknown op"),
    (reference_payload([b"/b", b"/a"], [b"", b""]), "not greater"),
    (reference_payload([b"/a", b"/a"], [b"", b""]), "not greater"),
])
def test_rejects_malformed(payload, match):
    for fn in (framing.decode_records, framing.scan_payload, framing.decode_keys_sizes):
        with pytest.raises(FramingError, match=match) as exc:
            fn(payload)
    if exc.value.record is not None:
        assert f"record {exc.value.record} at byte offset {exc.value.offset}" in str(exc.value)


def test_expect_count_mismatch():
    with pytest.raises(FramingError, match="expected 2"):
        framing.decode_records(GOOD, expect_count=2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.integers(0, 200), st.binary(max_size=8))
def test_fuzz_mutations_never_crash(noise, pos, insert):
    base = bytearray(GOOD)
    mutated = bytes(base[:pos] + insert + noise[: len(noise) % 7] + base[pos + len(insert):])
    for data in (mutated, noise, b"DSC1" + bytes(12) + noise):
        try:
            keys, values = framing.decode_records(data)
        except FramingError:
            continue
        assert framing.encode_records(keys, values) == data  # accepted => canonical


def run_chunker(keys, values, chunk_size, max_bytes, batch, **kw):
    ch = framing.Chunker(chunk_size, max_bytes, **kw)
    out = []
    for i in range(0, len(keys), batch):
        out += ch.add(keys[i:i + batch], values[i:i + batch])
    last = ch.finish()
    if last is not None:
        out.append(last)
    assert ch.finish() is None
    return out, ch


@settings(max_examples=80, deadline=None)
@given(record_sets(), st.integers(1, 8), st.integers(17, 400), st.integers(1, 20))
def test_chunker_matches_reference_and_batches(rs, chunk_size, max_bytes, batch):
    keys, values = rs
    whole, ch = run_chunker(keys, values, chunk_size, max_bytes, max(1, len(keys)))
    parts, _ = run_chunker(keys, values, chunk_size, max_bytes, batch)
    assert [c.payload for c in whole] == [c.payload for c in parts]
    ref = reference_chunks(keys, values, chunk_size, max_bytes)
    assert [c.payload for c in whole] == [reference_payload([k for k, _ in r], [v for _, v in r])
                                          for r in ref]
    assert ch.records == len(keys)
    assert ch.raw_bytes == sum(map(len, keys)) + sum(map(len, values))
    got_k, got_v = [], []
    for c in whole:
        k, v = framing.decode_records(c.payload, expect_count=c.record_count)
        got_k += k
        got_v += v
        assert (c.first_key, c.last_key) == (k[0], k[-1])
        assert c.keys_xxh3 == keys_digest(k)
        assert c.payload_xxh3 == xxhash.xxh3_64_intdigest(c.payload)
        assert c.raw_bytes == sum(map(len, k)) + sum(map(len, v))
        assert c.catalog is None and c.body is None
        assert c.payload_len == len(c.payload)
    assert (got_k, got_v) == (keys, values)


def test_boundary_rule_and_max_bytes():
    keys = [b"/key/%06d" % i for i in range(5000)]
    values = [b"v" * (i % 97) for i in range(5000)]
    chunks, _ = run_chunker(keys, values, 50, 8192, 333)
    for prev, c in zip(chunks, chunks[1:]):
        natural = framing.is_boundary(c.first_key, 50)
        k, v = framing.decode_records(c.payload)
        first_enc = 3 + len(k[0]) + len(v[0]) + (len(v[0]) >= 128)
        assert natural or len(prev.payload) + first_enc > 8192
        assert len(prev.payload) <= 8192
    assert framing.is_boundary(b"/anything", 1)
    assert framing.is_boundary(b"/x", 7) == (xxhash.xxh3_64_intdigest(b"/x") % 7 == 0)


def test_oversized_record_is_its_own_chunk():
    keys = [b"/a", b"/b", b"/c"]
    values = [b"1", b"x" * 10_000, b"2"]
    chunks, _ = run_chunker(keys, values, 10**9, 1000, 3)
    assert [c.record_count for c in chunks] == [1, 1, 1]


def test_chunker_rejects_disorder_across_batches():
    ch = framing.Chunker(10**9, 1 << 20)
    assert ch.add([b"/a", b"/c"], [b"", b""]) == []
    with pytest.raises(FramingError, match=r"record 1: key b'/b' is not greater"):
        ch.add([b"/d", b"/b"], [b"", b""])
    with pytest.raises(FramingError, match=r"record 0: key b'/b'.*b'/c'"):
        ch.add([b"/b"], [b""])
    with pytest.raises(FramingError, match="1..65535"):
        ch.add([b""], [b""])
    with pytest.raises(TypeError):
        ch.add(["/x"], [b""])
    assert ch.add([b"/d"], [b"ok"]) == []  # the rejected batches left the state intact
    last = ch.finish()
    assert framing.decode_records(last.payload)[0] == [b"/a", b"/c", b"/d"]


def test_catalog_and_compress():
    keys = [b"/c/%05d" % i for i in range(3000)]
    values = [random.Random(i).randbytes(i % 300) for i in range(3000)]
    ch = framing.Chunker(100, 1 << 16, catalog=True)
    chunks = ch.add_compress(keys, values, 1)
    chunks.append(ch.finish_compress(1))
    plain, _ = run_chunker(keys, values, 100, 1 << 16, 3000)
    assert [c.payload for c in chunks] == [c.payload for c in plain]
    i = 0
    for c in chunks:
        out, used = compress.inflate_raw(c.body.data, 1 << 20)
        assert out[:len(c.payload)] == c.payload and used == len(c.body.data)
        assert c.body.crc32 == zlib.crc32(out) and c.body.input_len == len(c.payload)
        expected = b"".join(uvarint(len(keys[j])) + keys[j] + uvarint(len(values[j]))
                            + struct.pack("<Q", xxhash.xxh3_64_intdigest(values[j]))
                            for j in range(i, i + c.record_count))
        assert c.catalog == expected
        i += c.record_count
    with pytest.raises(ValueError):
        ch.add_compress([b"/z"], [b""], 10)


def test_exclusion():
    m = framing.KeyMatcher(["/local/**", "/pins/*"])
    keys = [b"/blocks/a", b"/local/x", b"/local/y/z", b"/pins/a", b"/pins/a/b", b"/z"]
    values = [b"1", b"22", b"333", b"4444", b"55555", b"6"]
    chunks, ch = run_chunker(keys, values, 10**9, 1 << 20, 2, exclude=m)
    assert framing.decode_records(chunks[0].payload)[0] == [b"/blocks/a", b"/pins/a/b", b"/z"]
    assert (ch.excluded_records, ch.excluded_bytes) == (3, 8 + 2 + 10 + 3 + 7 + 4)


@pytest.mark.parametrize("pattern,key,expected", [
    ("/pins/*", b"/pins/abc", True),
    ("/pins/*", b"/pins/a/b", False),
    ("/pins/*", b"/pins/", True),
    ("/local/**", b"/local/x/y", True),
    ("/local/**", b"/local/x", True),
    ("/local/**", b"/local", False),
    ("**/tmp", b"/a/b/tmp", True),
    ("**/tmp", b"/a/btmp", False),
    ("/a?c", b"/abc", True),
    ("/a?c", b"/a/c", False),
    ("/a?c", b"/abbc", False),
    ("/x/*/y", b"/x/1/y", True),
    ("/x/*/y", b"/x/1/2/y", False),
    ("/x/**/y", b"/x/1/2/y", True),
    ("*a*a*a*a*a*b", b"a" * 60, False),
    (b"/raw\xff*", b"/raw\xff\x00", True),
    ("/exact", b"/exact", True),
    ("/exact", b"/exact2", False),
])
def test_key_matcher(pattern, key, expected):
    assert framing.KeyMatcher([pattern]).match(key) is expected


def test_key_matcher_rejects_bad_patterns():
    with pytest.raises(TypeError):
        framing.KeyMatcher("/a/*")
    with pytest.raises(TypeError):
        framing.KeyMatcher([5])
    with pytest.raises(ValueError, match="longer than"):
        framing.KeyMatcher(["/" + "?" * 2000])
    assert not framing.KeyMatcher([]).match(b"/x")


def test_empty_input_and_bad_settings():
    ch = framing.Chunker(10, 1 << 20)
    assert ch.add([], []) == []
    assert ch.finish() is None
    with pytest.raises(ValueError):
        framing.Chunker(0, 100)
    with pytest.raises(TypeError):
        framing.Chunker(1, 100, exclude=["/x"])


def test_pickling_for_worker_processes():
    import pickle

    ch = framing.Chunker(10**9, 1 << 20, catalog=True)
    ch.add([b"/a", b"/b"], [b"x" * 100, b"y"])
    chunk = ch.finish_compress(1)
    copy = pickle.loads(pickle.dumps(chunk))
    for name in ("payload", "payload_len", "record_count", "first_key", "last_key", "keys_xxh3",
                 "payload_xxh3", "raw_bytes", "catalog"):
        assert getattr(copy, name) == getattr(chunk, name)
    assert (copy.body.data, copy.body.crc32, copy.body.size) == \
        (chunk.body.data, chunk.body.crc32, chunk.body.size)
    m = pickle.loads(pickle.dumps(framing.KeyMatcher(["/a/*", b"**/z"])))
    assert m.match(b"/a/b") and m.match(b"/q/z") and not m.match(b"/a/b/c")
    with pytest.raises(TypeError):
        pickle.dumps(ch)
