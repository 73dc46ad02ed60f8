"""Archives crafted with consistent member checksums whose *structure* lies: every member,
index, summary and trailer digest is right, only what the index claims about the chunks'
keys is wrong. verify catches these; restore and ls must too (issue 20, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from dsbackup._ext.checksum import Xxh3_128, crc32, crc32_combine, xxh3_64
from dsbackup._ext.compress import deflate_body, tar_header
from dsbackup._ext.framing import encode_records, scan_payload
from dsbackup.archive import format as fmt
from dsbackup.archive.index import ChunkEntry, IndexBuilder


def honest_member(data: bytes, mtype: int, name: bytes, seq: int | None = None,
                  records: int = 1) -> bytes:
    """A member whose every checksum is right (hostile archives are built from these)."""
    body = deflate_body(data, 1)
    if mtype == fmt.TYPE_CHUNK:
        sub = fmt.chunk_subfield(seq, records, len(data), xxh3_64(data))
    else:
        sub = fmt.data_subfield(mtype, len(data), xxh3_64(data))
    hdr = tar_header(name, len(data), 0)
    crc = crc32_combine(crc32(hdr), body.crc32, body.size)
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + body.data
            + fmt.member_tail(crc, 512 + body.size))


def craft(path: Path, chunks: list[dict]) -> Path:
    """Each chunk: ``records`` [(key, value)], optional ``first``/``last`` (index key range,
    default the payload's) and ``keys_xxh3`` (default the payload's)."""
    manifest = json.dumps({"format": "dsbackup", "version": fmt.FORMAT_VERSION}).encode()
    out = bytearray(honest_member(manifest, fmt.TYPE_MANIFEST, fmt.MANIFEST_NAME))
    mlen = len(out)
    ib = IndexBuilder()
    fp = Xxh3_128()
    total = raw_bytes = 0
    for seq, c in enumerate(chunks):
        recs = c["records"]
        data = encode_records([k for k, _ in recs], [v for _, v in recs])
        info = scan_payload(data)
        raw = honest_member(data, fmt.TYPE_CHUNK, fmt.chunk_name(seq), seq=seq,
                            records=len(recs))
        ib.add_chunk(ChunkEntry(seq, len(out), len(raw), len(data), len(recs), xxh3_64(data),
                                xxh3_64(raw), c.get("keys_xxh3", info.keys_xxh3),
                                c.get("first", info.first_key), c.get("last", info.last_key)))
        fp.update(xxh3_64(data).to_bytes(8, "little"))
        total += len(recs)
        raw_bytes += sum(len(k) + len(v) for k, v in recs)
        out += raw
    idx = ib.encode(mlen, xxh3_64(bytes(out[:mlen])))
    ioff = len(out)
    im = honest_member(idx, fmt.TYPE_INDEX, fmt.INDEX_NAME)
    out += im
    summary = json.dumps({"chunks": len(chunks), "records": total,
                          "fingerprint": fp.hexdigest(), "raw_bytes": raw_bytes}).encode()
    soff = len(out)
    sm = honest_member(summary, fmt.TYPE_SUMMARY, fmt.SUMMARY_NAME)
    out += sm
    t = fmt.Trailer(ioff, len(im), xxh3_64(im), soff, len(sm), xxh3_64(sm), len(chunks),
                    len(out))
    out += t.encode()
    path.write_bytes(bytes(out))
    return path


def crafted_archives(d: Path) -> dict[str, Path]:
    """The four archives of issue 20, item 5."""
    return {
        # restore in mode empty wrote /A=v, then overwrote it with /A=evil
        "same_key_twice": craft(d / "same.tar.gz", [
            {"records": [(b"/A", b"v")]}, {"records": [(b"/A", b"evil")]}]),
        "overlapping": craft(d / "overlap.tar.gz", [
            {"records": [(b"/A", b"1"), (b"/C", b"3")]},
            {"records": [(b"/B", b"2"), (b"/D", b"4")]}]),
        # the index says [/A .. /B]: a --prefix /Z restore would skip it, a full one wrote it
        "key_outside_range": craft(d / "outside.tar.gz", [
            {"records": [(b"/A", b"1"), (b"/Z/secret", b"s")], "last": b"/B"}]),
        "wrong_key_digest": craft(d / "digest.tar.gz", [
            {"records": [(b"/A", b"1"), (b"/B", b"2")], "keys_xxh3": 12345}]),
    }
