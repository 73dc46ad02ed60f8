"""Rescan a dead writer's temporary archive file for a resumed backup (docs/FORMAT.md §11.5):
the longest prefix of whole, checked members — the manifest, the node member if any, then
chunks in seq order, each with its catalog when the archive has catalogs — and the index
entries and counters a writer needs to go on from there."""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass, field
from typing import Any

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.framing import scan_payload
from dsbackup.archive import format as fmt
from dsbackup.archive.index import CatalogEntry, ChunkEntry
from dsbackup.archive.member import decode_member, member_end
from dsbackup.errors import ArchiveError, IntegrityError


@dataclass
class ResumeState:
    """What survives of a killed backup's temp file. ``end``: where the file is cut (the end
    of the last kept member); ``epochs``: the summary's earlier `resumed` entries (§11.5)."""

    manifest: dict[str, Any]
    version: int
    manifest_length: int  # the manifest member (its length and member XXH3, as the index has)
    manifest_xxh3: int
    node_offset: int = 0
    node_length: int = 0
    chunks: list[ChunkEntry] = field(default_factory=list)
    catalogs: list[CatalogEntry] = field(default_factory=list)
    raw_bytes: int = 0
    end: int = 0
    dropped: int = 0  # bytes after `end` (a torn member, or members past a damaged one)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def next_seq(self) -> int:
        return len(self.chunks)

    @property
    def last_key(self) -> bytes | None:
        return self.chunks[-1].last_key if self.chunks else None

    @property
    def records(self) -> int:
        return sum(c.records for c in self.chunks)


def rescan(fd: int, where: str) -> ResumeState:
    """The longest valid prefix of the temp file open at `fd`. ArchiveError (exit 2) when its
    head is not a resumable archive's (no whole manifest, encrypted, paged index)."""
    size = os.fstat(fd).st_size
    if size == 0:
        raise ArchiveError(f"cannot resume: {where} is empty")
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        return _scan(memoryview(mm), where)
    finally:
        try:
            mm.close()
        except BufferError:  # views held by a raised error's frames: unmapped with them
            pass


def _head(mv: memoryview, where: str) -> tuple[ResumeState, int]:
    try:
        sub, end = member_end(mv, 0)
        if sub.member_type == fmt.TYPE_KEY:
            raise ArchiveError(f"cannot resume: {where} is an encrypted archive (--resume "
                               "continues unencrypted backups only)")
        _, data = decode_member(mv[:end], f"{where}: manifest", expected_type=fmt.TYPE_MANIFEST,
                                expected_name=fmt.MANIFEST_NAME)
        manifest = json.loads(bytes(data))
    except (IntegrityError, ValueError) as exc:
        raise ArchiveError(f"cannot resume: {where} has no whole manifest ({exc}); leave out "
                           "--resume to start again") from None
    if sub.flags & fmt.FLAG_PAGED:
        raise ArchiveError(f"cannot resume: {where} has a paged index (--resume continues "
                           "archives with one index only)")
    if sub.flags:
        raise ArchiveError(f"cannot resume: {where}: subfield flags {sub.flags:#x}")
    state = ResumeState(manifest=manifest, version=sub.version, manifest_length=end,
                        manifest_xxh3=xxh3_64(mv[:end]), end=end)
    pos = end
    if pos < len(mv):
        try:
            nsub, nend = member_end(mv, pos)
            if nsub.member_type == fmt.TYPE_NODE:
                decode_member(mv[pos:nend], f"{where}: node", expected_type=fmt.TYPE_NODE,
                              expected_name=fmt.NODE_NAME, version=sub.version)
                state.node_offset, state.node_length = pos, nend - pos
                state.end = pos = nend
        except IntegrityError:
            pass
    if manifest.get("node") is not None and not state.node_length:
        raise ArchiveError(f"cannot resume: {where} has no whole node member")
    return state, pos


def _scan(mv: memoryview, where: str) -> ResumeState:
    state, pos = _head(mv, where)
    catalog = bool(manifest_settings(state.manifest).get("include_metadata"))
    prev_last: bytes | None = None
    version = state.version
    while pos < len(mv):
        seq = len(state.chunks)
        try:
            sub, end = member_end(mv, pos)
            if sub.member_type != fmt.TYPE_CHUNK:
                break  # the index or summary of a writer killed while finishing: rewritten
            _, payload = decode_member(mv[pos:end], f"{where}: chunk {seq}",
                                       expected_type=fmt.TYPE_CHUNK,
                                       expected_name=fmt.chunk_name(seq), version=version,
                                       flags=0)
            if sub.seq != seq:
                break
            info = scan_payload(payload)
            first, last = bytes(info.first_key), bytes(info.last_key)
            if info.record_count != sub.records or (prev_last is not None
                                                    and first <= prev_last):
                break
            entry = ChunkEntry(seq, pos, end - pos, sub.data_len, sub.records, sub.data_xxh3,
                               xxh3_64(mv[pos:end]), info.keys_xxh3, first, last)
            cat = None
            if catalog:
                csub, cend = member_end(mv, end)
                _, cdata = decode_member(mv[end:cend], f"{where}: catalog {seq}",
                                         expected_type=fmt.TYPE_CATALOG,
                                         expected_name=fmt.catalog_name(seq),
                                         version=version, flags=0)
                cat = CatalogEntry(end, cend - end, xxh3_64(mv[end:cend]), csub.data_len,
                                   csub.data_xxh3)
                end = cend
        except IntegrityError:  # FramingError and MemberError are ones too
            break
        state.chunks.append(entry)
        if cat is not None:
            state.catalogs.append(cat)
        state.raw_bytes += info.raw_bytes
        prev_last = last
        state.end = pos = end
    state.dropped = len(mv) - state.end
    return state


def manifest_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    s = manifest.get("settings")
    return s if isinstance(s, dict) else {}
