"""Rescan a dead writer's temporary archive file for a resumed backup (docs/FORMAT.md §11.5):
the longest prefix of whole, checked members — the key header of an encrypted archive, the
manifest, the node member if any, then chunks in seq order, each with its catalog when the
archive has catalogs, and the index pages of a paged archive — and the index state and
counters a writer needs to go on from there.

An encrypted file is rescanned with its key: every kept member is opened (its AES-GCM tag
checked under the epoch of the run that wrote it, dsbackup.archive.epochs), since the plaintext
values of its index entries are only inside. A paged file is cut after its last whole, checked
index page (the page's data must equal the one rebuilt from the kept chunks), so that every
page, and every chunk, is written by one run.

An incremental file (its manifest names a parent) holds its stored chunks only: the seqs of
the references between them are gaps, and the references themselves were only in the killed
writer's memory (they go to the index, written last). Given the parent's index they are found
again: the references between kept stored chunks `a` and `b` are the parent's chunks whose
keys lie strictly between `a`'s last and `b`'s first key, and there must be exactly
`b - a - 1` of them (docs/FORMAT.md §11.5); where there are not, the file is cut before `b`."""

from __future__ import annotations

import json
import mmap
import os
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any

from dsbackup._ext.checksum import Xxh3_128, xxh3_64
from dsbackup._ext.compress import MemberError, inflate_raw
from dsbackup._ext.framing import FramingError, PayloadInfo, decode_keys_sizes, scan_payload
from dsbackup._plain import replace
from dsbackup.archive import format as fmt
from dsbackup.archive.chunkcodec import frame_payload
from dsbackup.archive.crypto import (
    ArchiveCipher,
    KeyMaterial,
    open_archive_key,
    parse_key_header,
)
from dsbackup.archive.epochs import epoch_at
from dsbackup.archive.index import FLAG_PARENT, CatalogEntry, ChunkEntry, IndexBuilder
from dsbackup.archive.member import decode_member, decode_member_at, member_end
from dsbackup.archive.pages import MAX_PAGE_ENTRIES, PagedIndexBuilder, valid_page_entries
from dsbackup.errors import ArchiveError, IntegrityError

_U64 = struct.Struct("<Q")
_NO_CATALOG = CatalogEntry(0, 0, 0, 0, 0)  # a reference's catalog entry (§5)


@dataclass
class ResumeState:
    """What survives of a killed backup's temp file. ``end``: where the file is cut (the end
    of the last kept member); ``epochs``: the summary's earlier `resumed` entries (§11.5);
    ``cipher``/``base``: an encrypted file's data key and key header length; ``epoch``: the
    nonce epoch the resumed run seals under (set by dsbackup.engine.resume); ``index``: the
    index builder holding the kept chunks (and pages); the totals and the fingerprint's
    hasher over the kept chunks (no object per kept chunk: memory does not grow with them
    beyond the index builder's own, which for a paged index is one page)."""

    manifest: dict[str, Any]
    version: int
    manifest_length: int  # the manifest member (its length and member XXH3, as the index has)
    manifest_xxh3: int
    flags: int = 0
    base: int = 0
    cipher: ArchiveCipher | None = None
    epoch: int = 0
    node_offset: int = 0
    node_length: int = 0
    index: IndexBuilder | PagedIndexBuilder = field(default_factory=IndexBuilder)
    fingerprint: Xxh3_128 = field(default_factory=Xxh3_128)  # §7, over the kept chunks
    next_seq: int = 0  # the kept chunks' count
    last_key: bytes | None = None
    records: int = 0
    raw_bytes: int = 0
    payload_bytes: int = 0
    catalog: bool = False  # the kept chunks have catalogs
    page_bytes: int = 0
    end: int = 0
    dropped: int = 0  # bytes after `end` (a torn member, or members past a damaged one)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    referenced: int = 0  # references among the kept chunks (an incremental file)
    ref_seqs: array = field(default_factory=lambda: array("q"))  # their parents' seqs

    def keep(self, e: ChunkEntry, cat: CatalogEntry | None, raw_bytes: int) -> None:
        """Count a kept chunk in the totals (its index entry goes to the builder apart)."""
        self.fingerprint.update(_U64.pack(e.payload_xxh3))
        self.next_seq += 1
        self.last_key = e.last_key
        self.records += e.records
        self.raw_bytes += raw_bytes
        self.payload_bytes += e.payload_len
        self.catalog = cat is not None

    def keep_reference(self, e: ChunkEntry) -> None:
        """Count a kept reference (its raw bytes apart: the index has none; its index entry
        goes to the builder apart)."""
        self.fingerprint.update(_U64.pack(e.payload_xxh3))
        self.next_seq += 1
        self.last_key = e.last_key
        self.records += e.records
        self.payload_bytes += e.payload_len
        self.referenced += 1
        self.ref_seqs.append(e.offset)

    @property
    def paged(self) -> bool:
        return bool(self.flags & fmt.FLAG_PAGED)


def rescan(fd: int, where: str, *, key: KeyMaterial | None = None,
           runs: list[tuple[int, int]] | None = None,
           page_entries: int | None = None, parent: Any = None) -> ResumeState:
    """The longest valid prefix of the temp file open at `fd`. ArchiveError (exit 2) when its
    head is not a resumable archive's (no whole manifest; encrypted without `key`, or the
    other way round); WrongKeyError when `key` does not open it. `runs`: (epoch, from_seq) of
    the runs that resumed it before (the resume history); `page_entries`: the page size of a
    paged file that holds no page yet; `parent`: the parent's index (chunks_overlapping,
    entry) of an incremental file, whose references are derived from it (module doc)."""
    size = os.fstat(fd).st_size
    if size == 0:
        raise ArchiveError(f"cannot resume: {where} is empty; leave out --resume to start again")
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    state: ResumeState | None = None
    try:
        state = _head(memoryview(mm), where, key)
        _scan(memoryview(mm), where, state, runs or [], page_entries, parent)
        return state
    except BaseException:
        if state is not None and state.cipher is not None:
            state.cipher.close()
        raise
    finally:
        try:
            mm.close()
        except BufferError:  # views held by a raised error's frames: unmapped with them
            pass


def is_encrypted(fd: int) -> bool:
    """Whether the temp file starts with a key header (an encrypted archive, §11.4)."""
    head = os.pread(fd, fmt.SUBFIELD_OFFSET + fmt.DATA_SUBLEN, 0)
    try:
        return fmt.parse_member_head(head + b"\0" * 8, "").member_type == fmt.TYPE_KEY
    except IntegrityError:
        return False


def _head(mv: memoryview, where: str, key: KeyMaterial | None) -> ResumeState:
    cipher: ArchiveCipher | None = None
    base = 0
    what = "manifest"
    try:
        sub, end = member_end(mv, 0)
        if sub.member_type == fmt.TYPE_KEY:
            what = "key header"
            if key is None:
                raise ArchiveError(f"cannot resume {where}: it is an encrypted archive; give "
                                   "--encrypt and the key options it was written with")
            _, kdata = decode_member(mv[:end], f"{where}: key header",
                                     expected_type=fmt.TYPE_KEY, expected_name=fmt.KEY_NAME)
            header = parse_key_header(kdata, f"{where}: key header")
            cipher = open_archive_key(header, key, sub.version, where)  # WrongKeyError: exit 2
            base = end
            what = "manifest"
            sub, end = member_end(mv, base)
        elif key is not None:
            raise ArchiveError(f"cannot resume {where}: it is not encrypted; leave out "
                               "--encrypt (or --resume, to start an encrypted backup again)")
        try:
            _, data = decode_member(mv[base:end], f"{where}: manifest",
                                    expected_type=fmt.TYPE_MANIFEST,
                                    expected_name=fmt.MANIFEST_NAME)
            if cipher is not None:
                data = cipher.open(fmt.TYPE_MANIFEST, 0, data, f"{where}: manifest")
            manifest = json.loads(bytes(data))
        except (IntegrityError, ValueError) as exc:
            raise ArchiveError(f"cannot resume: {where} has no whole manifest ({exc}); leave "
                               "out --resume to start again") from None
        if not isinstance(manifest, dict):
            raise ArchiveError(f"cannot resume: {where}: its manifest is not a JSON object")
        if sub.flags & ~fmt.KNOWN_FLAGS or bool(sub.flags & fmt.FLAG_ENCRYPTED) != bool(cipher):
            raise ArchiveError(f"cannot resume: {where}: subfield flags {sub.flags:#x}")
    except IntegrityError as exc:  # the key header torn or damaged
        if cipher is not None:
            cipher.close()
        raise ArchiveError(f"cannot resume: {where} has no whole {what} ({exc}); leave out "
                           "--resume to start again") from None
    except BaseException:
        if cipher is not None:
            cipher.close()
        raise
    state = ResumeState(manifest=manifest, version=sub.version, manifest_length=end - base,
                        manifest_xxh3=xxh3_64(mv[base:end]), flags=sub.flags, base=base,
                        cipher=cipher, end=end)
    pos = end
    if pos < len(mv):
        try:
            nsub, nend = member_end(mv, pos)
            if nsub.member_type == fmt.TYPE_NODE:
                _, ndata = decode_member(mv[pos:nend], f"{where}: node",
                                         expected_type=fmt.TYPE_NODE,
                                         expected_name=fmt.NODE_NAME, version=sub.version,
                                         flags=sub.flags)
                if cipher is not None:
                    cipher.open(fmt.TYPE_NODE, 0, ndata, f"{where}: node")
                state.node_offset, state.node_length = pos, nend - pos
                state.end = nend
        except IntegrityError:
            pass
    if manifest.get("node") is not None and not state.node_length:
        raise ArchiveError(f"cannot resume: {where} has no whole node member")
    return state


def _sealed_payload(plain: bytes, where: str) -> tuple[memoryview, PayloadInfo]:
    """The payload in an encrypted chunk's opened body (the raw deflate stream of
    payload || zero padding to 512 bytes, §11.4) and its scan: its length is where its
    records end (only one length scans: the records must end exactly there)."""
    bound = fmt.DEFLATE_MAX_RATIO * len(plain) + 1024
    try:
        out, consumed = inflate_raw(plain, bound)
    except MemberError as exc:
        raise IntegrityError(f"{where}: cannot inflate: {exc}") from None
    if consumed != len(plain) or len(out) % fmt.TAR_BLOCK:
        raise IntegrityError(f"{where}: body is not a padded payload")
    mv = memoryview(out)
    tail = out[-fmt.TAR_BLOCK:]
    n = len(out) - len(tail) + len(tail.rstrip(b"\0"))  # mostly the end: no value ends in 0
    try:
        return mv[:n], scan_payload(mv[:n])
    except FramingError:
        pass
    try:
        return mv, scan_payload(mv)
    except FramingError as exc:  # "data continues after the N records": the padding
        n = exc.offset
        if n is None or not 0 < len(out) - n < fmt.TAR_BLOCK or out[n:].count(0) != len(out) - n:
            raise
        return mv[:n], scan_payload(mv[:n])


def _sealed_catalog(plain: bytes, payload: memoryview, records: int, where: str
                    ) -> tuple[int, int]:
    """(data length, XXH3-64 of the data) of an encrypted catalog's opened body: its length
    follows from its chunk's payload (§8: a catalog entry is a record without its op byte and
    value, with the value's 8-byte XXH3)."""
    _, sizes = decode_keys_sizes(payload)
    length = len(payload) - 16 + 7 * records - sum(sizes)
    declared = fmt.padded(length)
    try:
        out, consumed = inflate_raw(plain, declared, declared)
    except MemberError as exc:
        raise IntegrityError(f"{where}: cannot inflate: {exc}") from None
    if consumed != len(plain) or out[length:].count(0) != declared - length:
        raise IntegrityError(f"{where}: not a catalog of its chunk")
    return length, xxh3_64(memoryview(out)[:length])


def _references(parent: Any, after: bytes | None, before: bytes, count: int
                 ) -> list[ChunkEntry] | None:
    """The `count` references a killed incremental wrote between a chunk ending at `after`
    (None: the start) and one starting at `before`: the parent's chunks strictly between;
    None when the parent has not exactly `count` of them there."""
    found: list[ChunkEntry] = []
    for i in parent.chunks_overlapping(after or b"", before):
        e = parent.entry(i)
        if (after is not None and e.first_key <= after) or e.last_key >= before:
            continue
        if len(found) == count:
            return None
        found.append(ChunkEntry(0, i, 0, e.payload_len, e.records, e.payload_xxh3, 0,
                                e.keys_xxh3, e.first_key, e.last_key, FLAG_PARENT))
    return found if len(found) == count else None


def _incremental_page(mv: memoryview, pos: int, where: str, state: ResumeState,
                      runs: list[tuple[int, int]], parent: Any, checker: PagedIndexBuilder,
                      pending: list[tuple[ChunkEntry, CatalogEntry | None, int]],
                      catalog: bool) -> int | None:
    """Keep the index page at `pos` of a paged incremental and the chunks before it: its
    entries are the stored chunks found since the last page (`pending`) and references, each
    of which must be the parent entry it names; the page rebuilt from them must equal its data
    (§11.3). Where it ends; None (nothing kept) when it is not such a page."""
    p, pe = checker.pages, checker.page_entries
    _, data, end = decode_member_at(mv, pos, f"{where}: index page {p}",
                                    expected_type=fmt.TYPE_PAGE, expected_name=fmt.page_name(p),
                                    version=state.version, flags=state.flags)
    if state.cipher is not None:
        data = state.cipher.open(fmt.TYPE_PAGE, p, data, f"{where}: index page {p}",
                                 epoch=epoch_at(runs, p * pe))
    # imported here: the writer imports this module, and pagedindex imports numpy (start-up
    # of every backup, before its first chunk)
    from dsbackup.archive.pagedindex import page_entries_of

    entries = page_entries_of(data)
    if len(entries) != pe:
        return None
    stored = iter(pending)
    merged: list[tuple[ChunkEntry, CatalogEntry | None, int | None]] = []
    for i, e in enumerate(entries):
        if e.seq != p * pe + i:
            return None
        if not e.in_parent:
            item = next(stored, None)
            if item is None or item[0].seq != e.seq:
                return None
            merged.append(item)
            continue
        if not 0 <= e.offset < len(parent):
            return None
        pe_ = parent.entry(e.offset)
        if (e.length, e.member_xxh3, e.payload_len, e.records, e.payload_xxh3, e.keys_xxh3,
                e.first_key, e.last_key) != (0, 0, pe_.payload_len, pe_.records,
                                             pe_.payload_xxh3, pe_.keys_xxh3, pe_.first_key,
                                             pe_.last_key):
            return None
        merged.append((e, _NO_CATALOG if catalog else None, None))
    if next(stored, None) is not None:
        return None
    for e, c, _ in merged:
        checker.add_chunk(e)
        if c is not None:
            checker.add_catalog(c)
    if checker.take_page() != (p, bytes(data)):
        checker.drop_page()
        return None
    checker.page_written(pos, end - pos, xxh3_64(mv[pos:end]))
    for e, c, raw in merged:
        if raw is None:
            state.keep_reference(e)
        else:
            state.keep(e, c, raw)
    state.page_bytes += end - pos
    return end


def _scan(mv: memoryview, where: str, state: ResumeState, runs: list[tuple[int, int]],
          page_entries: int | None, parent: Any = None) -> None:
    catalog = bool(manifest_settings(state.manifest).get("include_metadata"))
    version, flags, cipher = state.version, state.flags, state.cipher
    paged = state.paged
    pe: int | None = None  # a paged file's page size, from its first page
    checker: PagedIndexBuilder | None = None  # the kept pages; rebuilds each to compare it
    pending: list[tuple[ChunkEntry, CatalogEntry | None, int]] = []  # since the last page
    pos = state.end
    while pos < len(mv):
        seq = state.next_seq + len(pending)
        prev_last = pending[-1][0].last_key if pending else state.last_key
        try:
            sub = fmt.parse_member_head(mv[pos:], f"{where}: offset {pos}")
            if paged and parent is not None:  # an incremental: its pages hold the references
                if sub.member_type == fmt.TYPE_PAGE:
                    if checker is None:
                        checker = PagedIndexBuilder(page_entries or MAX_PAGE_ENTRIES)
                    end = _incremental_page(mv, pos, where, state, runs, parent, checker,
                                            pending, catalog)
                    if end is None:
                        break
                    pending.clear()
                    state.end = pos = end
                    continue
                if sub.member_type == fmt.TYPE_CHUNK:  # after the last stored one, in its page
                    pe = page_entries or MAX_PAGE_ENTRIES
                    kept = checker.pages if checker is not None else 0
                    lo = pending[-1][0].seq + 1 if pending else state.next_seq
                    if not lo <= sub.seq < (kept + 1) * pe:
                        break  # a page was due before it
                    seq = sub.seq
            elif paged and sub.member_type == fmt.TYPE_PAGE:
                p = checker.pages if checker is not None else 0
                if pe is None:
                    if not valid_page_entries(len(pending)):
                        break
                    pe = len(pending)
                    checker = PagedIndexBuilder(pe)
                    for e, c, _ in pending:
                        checker.add_chunk(e)
                        if c is not None:
                            checker.add_catalog(c)
                if len(pending) != pe or checker is None:
                    break
                _, data, end = decode_member_at(mv, pos, f"{where}: index page {p}",
                                                expected_type=fmt.TYPE_PAGE,
                                                expected_name=fmt.page_name(p),
                                                version=version, flags=flags)
                if cipher is not None:
                    data = cipher.open(fmt.TYPE_PAGE, p, data, f"{where}: index page {p}",
                                       epoch=epoch_at(runs, p * pe))
                if checker.take_page() != (p, bytes(data)):
                    break
                checker.page_written(pos, end - pos, xxh3_64(mv[pos:end]))
                for item in pending:
                    state.keep(*item)
                pending.clear()
                state.page_bytes += end - pos
                state.end = pos = end
                continue
            if sub.member_type != fmt.TYPE_CHUNK:
                break  # the index or summary of a writer killed while finishing: rewritten
            if paged and parent is None and len(pending) == (pe or MAX_PAGE_ENTRIES):
                break  # a page was due here
            if parent is not None and sub.seq > seq:  # references were written before it
                seq = sub.seq
            cwhere = f"{where}: chunk {seq}"
            sub, data, end = decode_member_at(mv, pos, cwhere, expected_type=fmt.TYPE_CHUNK,
                                              expected_name=fmt.chunk_name(seq),
                                              version=version, flags=flags)
            if sub.seq != seq:
                break
            epoch = 0
            if cipher is not None:
                if sub.records != 0:
                    break
                epoch = epoch_at(runs, seq)
                plain = cipher.open(fmt.TYPE_CHUNK, seq, data, cwhere, epoch=epoch)
                if flags & fmt.FLAG_ZSTD:  # the sealed frame (§11.6)
                    payload = memoryview(frame_payload(plain, cwhere))
                    info = scan_payload(payload)
                else:
                    payload, info = _sealed_payload(plain, cwhere)
                plen, pxxh = len(payload), xxh3_64(payload)
            elif flags & fmt.FLAG_ZSTD:  # the subfield describes the frame (§11.6)
                payload = memoryview(frame_payload(data, cwhere))
                plen, pxxh = len(payload), xxh3_64(payload)
                info = scan_payload(payload)
            else:
                payload, plen, pxxh = data, sub.data_len, sub.data_xxh3
                info = scan_payload(payload)
            first, last = bytes(info.first_key), bytes(info.last_key)
            if (cipher is None and info.record_count != sub.records) or (
                    prev_last is not None and first <= prev_last):
                break
            refs: list[ChunkEntry] = []
            if not paged and seq > state.next_seq:  # an incremental's gap
                found = _references(parent, prev_last, first, seq - state.next_seq)
                if found is None:
                    break
                refs = found
            entry = ChunkEntry(seq, pos, end - pos, plen, info.record_count, pxxh,
                               xxh3_64(mv[pos:end]), info.keys_xxh3, first, last, 0, epoch)
            cat = None
            if catalog:
                cwhere = f"{where}: catalog {seq}"
                csub, cdata, cend = decode_member_at(mv, end, cwhere,
                                                     expected_type=fmt.TYPE_CATALOG,
                                                     expected_name=fmt.catalog_name(seq),
                                                     version=version, flags=flags)
                if cipher is not None:
                    cplain = cipher.open(fmt.TYPE_CATALOG, seq, cdata, cwhere, epoch=epoch)
                    clen, cxxh = _sealed_catalog(cplain, payload, info.record_count, cwhere)
                else:
                    clen, cxxh = csub.data_len, csub.data_xxh3
                cat = CatalogEntry(end, cend - end, xxh3_64(mv[end:cend]), clen, cxxh)
                end = cend
        except IntegrityError:  # FramingError, MemberError and a failed tag are ones too
            break
        index = None if paged and parent is not None else checker if paged else state.index
        for r in refs:  # (not paged: a paged incremental's references come from its pages)
            r = replace(r, seq=state.next_seq,
                        epoch=0 if cipher is None else epoch_at(runs, state.next_seq))
            state.index.add_chunk(r)
            if catalog:
                state.index.add_catalog(_NO_CATALOG)
            state.keep_reference(r)
        if index is not None:
            index.add_chunk(entry)
            if cat is not None:
                index.add_catalog(cat)
        if paged:  # kept once the page after it is
            pending.append((entry, cat, info.raw_bytes))
        else:
            state.keep(entry, cat, info.raw_bytes)
            state.end = end
        pos = end
    if paged:  # cut after the last page: every page is then written by one run
        if checker is None:
            state.index = PagedIndexBuilder(page_entries or MAX_PAGE_ENTRIES)
        else:
            checker.drop_page()
            state.index = checker
    state.dropped = len(mv) - state.end


def manifest_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    s = manifest.get("settings")
    return s if isinstance(s, dict) else {}
