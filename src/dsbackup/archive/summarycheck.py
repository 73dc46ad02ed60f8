"""The summary against the index (docs/FORMAT.md §7), and an incremental's references against
its parent chain (§10.2), from the index entries alone: no chunk is read.

A chunk rewritten together with its member checksums and its index entry's payload XXH3 (bit
rot "repaired" by a tool, a hand edit) passes every member and payload check; the summary's
`fingerprint` (over every chunk's payload XXH3) and totals still tell. `verify` checks them, and
so does a restore before it writes anything (O(chunks): 8 bytes a chunk hashed, no payload).
"""

from __future__ import annotations

from typing import Any

from dsbackup._ext.checksum import Xxh3_128
from dsbackup.errors import IntegrityError, MissingParentError

# references judged one by one (ParentChain.locate, no numpy import) up to this many; more are
# compared in bulk first (archive.refcheck), locate judging only those that do not pass
LOCATE_REFERENCES = 4096


def summary_problems(reader: Any, manifest_ok: bool = True) -> list[IntegrityError]:
    """Each summary field (`chunks`, `records`, `payload_bytes`, `fingerprint`, and an
    incremental's `content_fingerprint`) that disagrees with the index; [] when the summary
    or an index page cannot be read (reported by the checks of those parts)."""
    try:
        s = reader.summary
    except IntegrityError:
        return []
    fp = Xxh3_128()
    records = payload = refs = 0
    try:
        for digests, recs, nrefs, plen in reader.index.totals():  # page by page
            fp.update(digests)
            records += recs
            refs += nrefs
            payload += plen
    except IntegrityError:
        return []  # a damaged page: reported by the layout check
    expect: dict[str, Any] = {"chunks": reader.chunk_count, "records": records}
    if "payload_bytes" in s:  # not in archives crafted by hand (the writer always has it)
        expect["payload_bytes"] = payload
    parent = reader.manifest.get("parent") if manifest_ok else None
    if isinstance(parent, dict) and isinstance(parent.get("fingerprint"), str):
        # incremental: the content digest, then the parent's fingerprint (§7)
        expect["content_fingerprint"] = fp.hexdigest()
        if "referenced_chunks" in s:
            expect["referenced_chunks"] = refs
        try:
            fp.update(bytes.fromhex(parent["fingerprint"]))
        except ValueError:
            pass
    expect["fingerprint"] = fp.hexdigest()
    return [IntegrityError(f"{reader.path}: summary says {k}={s.get(k)!r} but the index gives "
                           f"{v!r}", part="summary")
            for k, v in expect.items() if s.get(k) != v]


def check_summary(reader: Any, what: str) -> None:
    """IntegrityError (exit 3), one line, when the summary disagrees with the index: the
    archive was altered after it was written (`what`: what is therefore not done)."""
    problems = summary_problems(reader)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(f"{problems[0]}{more}: the archive was altered after it was "
                             f"written; {what} (dsbackup verify lists the problems)",
                             part="summary")


def check_references(reader: Any, chain: Any, what: str) -> None:
    """Every reference of `reader` resolved through `chain` (an opened ParentChain) and
    compared with the entry it names, hop by hop, as ParentChain.locate does. Its error when
    one does not match (MissingParentError: altered or wrong parent); but an ancestor whose
    own summary disagrees with its index was altered (a chunk rewritten with its checksums):
    IntegrityError naming it (`what`: what is therefore not done)."""
    try:
        seqs = None if reader.index.paged else reader.index.reference_seqs()
        if seqs is None or len(seqs) > LOCATE_REFERENCES:
            from dsbackup.archive.refcheck import suspect_references

            seqs = suspect_references(reader, chain.levels)[1].tolist()
        for i in seqs:
            chain.locate(i)
    except MissingParentError:
        for level in chain.levels:
            problems = summary_problems(level)
            if problems:
                raise IntegrityError(f"{problems[0]}: this parent of {reader.path} was altered "
                                     f"after it was written; {what} (dsbackup verify "
                                     f"{level.path} lists the problems)", part="parent"
                                     ) from None
        raise
