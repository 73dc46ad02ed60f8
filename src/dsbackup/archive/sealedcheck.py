"""Quick verify of an encrypted archive without its key (docs/FORMAT.md §11.4): the index is
sealed, so the members are walked in file order instead, each checked by its own subfield,
CRC-32 and the XXH3-64 of its sealed data; index and summary by the trailer's digests."""

from __future__ import annotations

from dsbackup._ext.checksum import xxh3_64
from dsbackup.archive import format as fmt
from dsbackup.archive.member import decode_member
from dsbackup.archive.reader import ArchiveReader
from dsbackup.errors import IntegrityError

_STORED_BLOCK = 65535


def sealed_member_length(sublen: int, data_len: int) -> int:
    """A member written with stored blocks (every sealed member): its exact length."""
    p = fmt.padded(data_len)
    blocks = max(1, -(-p // _STORED_BLOCK))
    return (fmt.SUBFIELD_OFFSET + sublen + len(fmt.STORED_TAR_PREFIX) + fmt.TAR_BLOCK
            + 5 * blocks + p + 8)


def walk_sealed(r: ArchiveReader) -> tuple[int, int, list[IntegrityError]]:
    """(chunk members checked, bytes checked, problems) of a locked reader."""
    problems: list[IntegrityError] = []
    t = r.trailer
    for off, length, digest, part in ((t.index_offset, t.index_length, t.index_xxh3, "index"),
                                      (t.summary_offset, t.summary_length, t.summary_xxh3,
                                       "summary")):
        if xxh3_64(r.pread(off, length)) != digest:
            problems.append(IntegrityError(f"{r.path}: {part} member checksum mismatch",
                                           part=part))
    pos, end = r.base, t.index_offset
    chunks = nbytes = 0
    expect = [fmt.TYPE_MANIFEST]
    prev_seq = -1
    # a paged index (§11.3): its pages come between the chunks, numbered in order
    paged = [fmt.TYPE_PAGE] if r.flags & fmt.FLAG_PAGED else []
    page = 0
    while pos < end:
        where = f"{r.path}: member at offset {pos}"
        head = r.pread(pos, min(end - pos, fmt.SUBFIELD_OFFSET + fmt.CHUNK_SUBLEN))
        try:
            sub = fmt.parse_member_head(head + bytes(8), where)
            if sub.member_type not in expect:
                raise IntegrityError(f"{where}: a {fmt.TYPE_NAMES.get(sub.member_type)} member "
                                     "out of place")
            length = fmt.SUBFIELD_OFFSET + (fmt.CHUNK_SUBLEN if sub.seq is not None
                                            else fmt.DATA_SUBLEN)
            length = sealed_member_length(length - fmt.SUBFIELD_OFFSET, sub.data_len)
            if pos + length > end:
                raise IntegrityError(f"{where}: runs past the index")
            mtype = sub.member_type
            if mtype == fmt.TYPE_CHUNK:
                if sub.seq <= prev_seq:
                    raise IntegrityError(f"{where}: chunk {sub.seq} after chunk {prev_seq}")
                name, chunk = fmt.chunk_name(sub.seq), sub.seq
            elif mtype == fmt.TYPE_CATALOG:
                name, chunk = fmt.catalog_name(prev_seq), prev_seq
            elif mtype == fmt.TYPE_PAGE:
                name, chunk = fmt.page_name(page), None
            else:
                name = {fmt.TYPE_MANIFEST: fmt.MANIFEST_NAME, fmt.TYPE_NODE: fmt.NODE_NAME}[mtype]
                chunk = None
            where = (f"{r.path}: chunk {chunk}" if mtype == fmt.TYPE_CHUNK else
                     f"{r.path}: catalog {chunk}" if mtype == fmt.TYPE_CATALOG else
                     f"{r.path}: index page {page}" if mtype == fmt.TYPE_PAGE else
                     f"{r.path}: {fmt.TYPE_NAMES[mtype]}")
            decode_member(r.pread(pos, length), where, expected_type=mtype, expected_name=name,
                          chunk=chunk, version=r.version, flags=r.flags)
        except IntegrityError as exc:
            problems.append(exc)
            return chunks, nbytes, problems  # lengths are unknown past a damaged member
        if mtype == fmt.TYPE_CHUNK:
            chunks += 1
            prev_seq = sub.seq
        elif mtype == fmt.TYPE_PAGE:
            page += 1
        nbytes += length
        pos += length
        expect = ([fmt.TYPE_NODE, fmt.TYPE_CHUNK] if mtype == fmt.TYPE_MANIFEST else
                  [fmt.TYPE_CHUNK, fmt.TYPE_CATALOG] if mtype == fmt.TYPE_CHUNK else
                  [fmt.TYPE_CHUNK]) + paged
    if chunks > t.chunk_count:
        problems.append(IntegrityError(f"{r.path}: {chunks} chunk members but the trailer "
                                       f"counts {t.chunk_count}", part="trailer"))
    return chunks, nbytes, problems
