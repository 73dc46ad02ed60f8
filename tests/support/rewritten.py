"""Archives with one chunk rewritten *consistently*: a value byte changed, and the chunk
member's checksums, its index entry's payload XXH3 (a page's, when paged), the member table
and the trailer recomputed to match — what bit rot plus a tool that "repairs" checksums, or a
hand edit, leaves. Only the summary (its `fingerprint`, docs/FORMAT.md §7) still tells. Built
with benchmarks/fuzzlib's archive model, which re-seals members of an encrypted archive whose
raw key it is given."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from fuzzlib import model  # noqa: E402

from dsbackup.archive import format as fmt  # noqa: E402


def rewrite_chunk(path: Path, seq: int | None = None, *, raw_key: bytes | None = None) -> int:
    """Flip the low bit of the last value byte of stored chunk `seq` (default: the first stored
    chunk) and make every checksum agree, the summary excepted. Gzip chunks only. Returns the
    chunk's seq."""
    a = model.parse(path.read_bytes(), raw_key)
    chunks = a.of_type(fmt.TYPE_CHUNK)
    m = chunks[0] if seq is None else next(c for c in chunks if c.seq == seq)
    entry = _entry(a, m.seq)
    e = _entry_offset(entry, m.seq)
    plen = entry.get(e + 24)
    # a sealed chunk holds a raw deflate stream of its tar data
    payload = zlib.decompressobj(-15).decompress(m.data)[:plen] if m.sealed else m.data
    recs = model.parse_records(payload)
    assert recs, "not a chunk payload"
    j = max(i for i, (_, v) in enumerate(recs) if v)
    k, v = recs[j]
    recs[j] = (k, v[:-1] + bytes([v[-1] ^ 1]))
    new = model.encode_records(recs)
    assert len(new) == len(payload)
    if m.sealed:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        m.data = c.compress(new + bytes(fmt.padded(len(new)) - len(new))) + c.flush()
    else:
        m.data = new
    m.dirty = True
    entry.put(e + 40, model.xxh3_64(new))  # the payload XXH3 (§5)
    path.write_bytes(model.serialize(a))
    return m.seq


def _entry(a: model.Archive, seq: int) -> model.Member:
    """The index (or index page) member holding stored chunk `seq`'s entry."""
    for t in a.members:
        if t.mtype not in (fmt.TYPE_INDEX, fmt.TYPE_PAGE) or t.data[:4] == b"DSR1":
            continue
        try:
            _entry_offset(t, seq)
        except LookupError:
            continue
        return t
    raise LookupError(f"no index entry stores chunk {seq}")


def _entry_offset(t: model.Member, seq: int) -> int:
    count = t.get(24 if t.data[:4] == b"DSP1" else 8)
    for i in range(count):
        e = 64 + i * model.ENTRY
        if t.get(e) == seq and not t.get(e + 80, 4) & 1:
            return e
    raise LookupError(seq)


def rewrite_summary(path: Path, fields: dict, *, raw_key: bytes | None = None) -> None:
    """Set `fields` in the summary and make the trailer agree: a summary that lies about
    what no index field holds (`raw_bytes`) passes every check before the chunks are read."""
    import json

    a = model.parse(path.read_bytes(), raw_key)
    s = a.find(fmt.TYPE_SUMMARY)
    s.data = json.dumps({**json.loads(s.data), **fields}).encode()
    s.dirty = True
    path.write_bytes(model.serialize(a))
