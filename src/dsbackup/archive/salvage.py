"""Salvage: rebuild the chunk table of a truncated, damaged or index-less archive by walking
member headers from the start of the file, and report which chunks and key ranges survive."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.framing import scan_payload
from dsbackup.archive import format as fmt
from dsbackup.archive.chunkcodec import frame_payload
from dsbackup.archive.member import decode_member, member_end
from dsbackup.errors import ArchiveError, IntegrityError


@dataclass(frozen=True)
class SalvagedChunk:
    seq: int
    offset: int
    length: int
    records: int
    first_key: bytes
    last_key: bytes
    payload_xxh3: int


@dataclass
class SalvageReport:
    path: str
    size: int
    chunks: list[SalvagedChunk] = field(default_factory=list)
    damaged: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, reason)
    has_manifest: bool = False
    has_index: bool = False
    has_summary: bool = False
    has_trailer: bool = False
    lost_ranges: list[tuple[bytes | None, bytes | None, list[int]]] = field(default_factory=list)
    # incremental archives: seqs stored in the parent chain (from a readable index), not lost
    referenced: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.damaged and not self.lost_ranges and self.has_trailer

    @property
    def records(self) -> int:
        return sum(c.records for c in self.chunks)

    def iter_payloads(self) -> Iterator[tuple[SalvagedChunk, memoryview]]:
        """Re-read and check each recovered chunk; yields (chunk, payload)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for c in self.chunks:
                raw = os.pread(fd, c.length, c.offset)
                where = f"{self.path}: chunk {c.seq}"
                sub, payload = decode_member(raw, where, expected_type=fmt.TYPE_CHUNK,
                                             expected_name=fmt.chunk_name(c.seq), chunk=c.seq)
                if sub.flags & fmt.FLAG_ZSTD:  # the tar entry is the frame (§11.6)
                    payload = memoryview(frame_payload(payload, where, c.seq))
                yield c, payload
        finally:
            os.close(fd)

    def to_json(self) -> dict[str, object]:
        def k(b: bytes | None) -> str | None:
            return None if b is None else b.decode("utf-8", "backslashreplace")
        return {
            "path": self.path, "size": self.size, "complete": self.complete,
            "recovered_chunks": len(self.chunks), "recovered_records": self.records,
            "chunks": [{"seq": c.seq, "records": c.records, "first_key": k(c.first_key),
                        "last_key": k(c.last_key)} for c in self.chunks],
            "damaged": [{"start": s, "end": e, "reason": r} for s, e, r in self.damaged],
            "lost_ranges": [{"after": k(a), "before": k(b), "missing_seqs": m}
                            for a, b, m in self.lost_ranges],
            "has_manifest": self.has_manifest, "has_index": self.has_index,
            "has_summary": self.has_summary, "has_trailer": self.has_trailer,
            "referenced_chunks": len(self.referenced),
        }


def salvage(path: str | os.PathLike[str]) -> SalvageReport:
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"{p}: cannot open: {exc}") from None
    try:
        size = os.fstat(fd).st_size
        report = SalvageReport(path=str(p), size=size)
        if size == 0:
            report.damaged.append((0, 0, "empty file"))
            return report
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
            mv = memoryview(mm)
            try:
                _walk(mm, mv, report)
            finally:
                mv.release()
    finally:
        os.close(fd)
    report.referenced = _referenced(p) if report.has_index else []
    _lost_ranges(report)
    return report


def _referenced(path: Path) -> list[int]:
    from dsbackup.archive.reader import ArchiveReader

    try:
        with ArchiveReader(path) as r:
            return [i for i, e in enumerate(r.index.entries()) if e.in_parent]
    except (ArchiveError, IntegrityError):
        return []


def _walk(mm: mmap.mmap, mv: memoryview, report: SalvageReport) -> None:
    pos, size = 0, len(mv)
    while pos < size:
        if size - pos == fmt.TRAILER_SIZE:
            try:
                fmt.Trailer.decode(bytes(mv[pos:]), size)
                report.has_trailer = True
                return
            except IntegrityError:
                pass
        try:
            sub, end = member_end(mv, pos)
            name = fmt.chunk_name(sub.seq) if sub.member_type == fmt.TYPE_CHUNK else None
            _, data = decode_member(mv[pos:end], f"offset {pos}", expected_type=sub.member_type,
                                    expected_name=name)
            if sub.member_type == fmt.TYPE_CHUNK:
                pxxh = sub.data_xxh3
                if sub.flags & fmt.FLAG_ZSTD:  # the tar entry is the frame (§11.6)
                    data = frame_payload(data, f"offset {pos}", sub.seq)
                    pxxh = xxh3_64(data)
                info = scan_payload(data)
                report.chunks.append(SalvagedChunk(sub.seq, pos, end - pos, info.record_count,
                                                   bytes(info.first_key), bytes(info.last_key),
                                                   pxxh))
            elif sub.member_type == fmt.TYPE_MANIFEST:
                report.has_manifest = True
            elif sub.member_type == fmt.TYPE_INDEX:
                report.has_index = True
            elif sub.member_type == fmt.TYPE_SUMMARY:
                report.has_summary = True
            pos = end
        except IntegrityError as exc:  # FramingError and MemberError are ones too
            nxt = mm.find(fmt.GZIP_HEAD, pos + 1)
            end = size if nxt < 0 else nxt
            report.damaged.append((pos, end, str(exc)))
            pos = end


def _lost_ranges(report: SalvageReport) -> None:
    """Key ranges lost between recovered chunks (by gaps in seq numbers or key order)."""
    chunks = sorted(report.chunks, key=lambda c: c.seq)
    report.chunks = chunks
    expected = 0
    prev_last: bytes | None = None
    refs = set(report.referenced)
    for c in chunks:
        missing = [s for s in range(expected, c.seq) if s not in refs]
        if missing:
            report.lost_ranges.append((prev_last, c.first_key, missing))
        expected = c.seq + 1
        prev_last = c.last_key
    if not report.has_index:
        # Without the index we cannot know how many chunks followed the last one recovered.
        report.lost_ranges.append((prev_last, None, []))
