"""Archive verification: quick (structure + every member's XXH3), deep (inflate and parse every
chunk), or sampled (quick + deep on a random fraction of chunks). Chunks are checked in parallel
threads; the native calls release the GIL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dsbackup._ext.framing import FramingError, scan_payload
from dsbackup._plain import Plain
from dsbackup.archive.index import ChunkEntry
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.readplan import plan_chunk_reads
from dsbackup.archive.summarycheck import summary_problems
from dsbackup.errors import (
    ArchiveError,
    ArchiveUnavailable,
    IntegrityError,
    KeyRequiredError,
    MissingParentError,
    PlainArchiveError,
    UnsupportedArchive,
    WrongKeyError,
)
from dsbackup.poolmap import ordered_map
from dsbackup.storage import display


class VerifyReport(Plain):
    """What verify_backup found (docs/API.md)."""

    __slots__ = ("path", "ok", "mode", "chunks", "checked_chunks", "deep_checked_chunks",
                 "referenced_chunks", "parents", "trusted_chunks", "checked_chain",
                 "blocks_checked", "blocks_unchecked", "blocks_unchecked_examples",
                 "bytes_checked", "records", "duration_s", "errors", "bad_chunks", "bad_ranges",
                 "bad_parts", "node_files", "node_bytes")
    path: str
    ok: bool
    mode: str
    chunks: int
    checked_chunks: int
    deep_checked_chunks: int
    referenced_chunks: int
    parents: list[str]
    # references whose members were not read: they resolve into a chain the caller had just
    # verified (`trusted_chain`); each one's entry was still compared hop by hop
    trusted_chunks: int
    # this archive and its parents (this one first), each as the identity of its file before
    # the members were read (`chain_identity`), when every chunk's member was
    # hashed by this verify, those its references resolve to included (local files only):
    # what `trusted_chain` takes
    checked_chain: list[str]
    blocks_checked: int
    # block keys --check-blocks could not re-hash, by reason (see dsbackup.blockcheck)
    blocks_unchecked: dict[str, int]
    blocks_unchecked_examples: dict[str, str]
    bytes_checked: int
    records: int
    duration_s: float
    errors: list[str]
    bad_chunks: list[int]
    bad_ranges: list[dict[str, object]]
    bad_parts: list[str]
    node_files: int | None  # entries of the node member (None: none, or quick)
    node_bytes: int  # the node member's data length (checked)

    def __init__(self, path: str, ok: bool = True, mode: str = "deep", chunks: int = 0,
                 checked_chunks: int = 0, deep_checked_chunks: int = 0,
                 referenced_chunks: int = 0, parents: list[str] | None = None,
                 trusted_chunks: int = 0, checked_chain: list[str] | None = None,
                 blocks_checked: int = 0, blocks_unchecked: dict[str, int] | None = None,
                 blocks_unchecked_examples: dict[str, str] | None = None,
                 bytes_checked: int = 0, records: int = 0, duration_s: float = 0.0,
                 errors: list[str] | None = None, bad_chunks: list[int] | None = None,
                 bad_ranges: list[dict[str, object]] | None = None,
                 bad_parts: list[str] | None = None, node_files: int | None = None,
                 node_bytes: int = 0) -> None:
        self.path = path
        self.ok = ok
        self.mode = mode
        self.chunks = chunks
        self.checked_chunks = checked_chunks
        self.deep_checked_chunks = deep_checked_chunks
        self.referenced_chunks = referenced_chunks
        self.parents = [] if parents is None else parents
        self.trusted_chunks = trusted_chunks
        self.checked_chain = [] if checked_chain is None else checked_chain
        self.blocks_checked = blocks_checked
        self.blocks_unchecked = {} if blocks_unchecked is None else blocks_unchecked
        self.blocks_unchecked_examples = (
            {} if blocks_unchecked_examples is None else blocks_unchecked_examples)
        self.bytes_checked = bytes_checked
        self.records = records
        self.duration_s = duration_s
        self.errors = [] if errors is None else errors
        self.bad_chunks = [] if bad_chunks is None else bad_chunks
        self.bad_ranges = [] if bad_ranges is None else bad_ranges
        self.bad_parts = [] if bad_parts is None else bad_parts
        self.node_files = node_files
        self.node_bytes = node_bytes

    def add(self, exc: IntegrityError | ArchiveError, reader: ArchiveReader | None = None) -> None:
        self.ok = False
        self.errors.append(str(exc))
        chunk = getattr(exc, "chunk", None)
        part = getattr(exc, "part", None)
        if chunk is not None and chunk not in self.bad_chunks:
            self.bad_chunks.append(chunk)
            if reader is not None:
                try:
                    e = reader.entry(chunk)
                    self.bad_ranges.append({"chunk": chunk, "first_key": e.first_key,
                                            "last_key": e.last_key, "records": e.records})
                except (IndexError, IntegrityError):
                    self.bad_ranges.append({"chunk": chunk})
        elif part and part not in self.bad_parts:
            self.bad_parts.append(part)

    def to_json(self) -> dict[str, object]:
        def key(k: object) -> object:
            return k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else k
        return {
            "path": self.path, "ok": self.ok, "mode": self.mode, "chunks": self.chunks,
            "checked_chunks": self.checked_chunks,
            "deep_checked_chunks": self.deep_checked_chunks,
            "referenced_chunks": self.referenced_chunks, "parents": self.parents,
            "trusted_chunks": self.trusted_chunks,
            "blocks_checked": self.blocks_checked,
            "blocks_unchecked": dict(self.blocks_unchecked),
            "blocks_unchecked_examples": dict(self.blocks_unchecked_examples),
            "bytes_checked": self.bytes_checked, "records": self.records,
            "duration_s": round(self.duration_s, 6), "errors": self.errors,
            "bad_chunks": sorted(self.bad_chunks), "bad_parts": self.bad_parts,
            "node_files": self.node_files, "node_bytes": self.node_bytes,
            "bad_ranges": [{k: key(v) for k, v in r.items()} for r in self.bad_ranges],
        }


def check_payload(path: os.PathLike[str] | str, i: int, e: ChunkEntry, payload: Any) -> Any:
    """Parse chunk i's payload and check it against its index entry `e`; returns what
    scan_payload found. Raises IntegrityError naming the chunk and its key range."""
    try:
        info = scan_payload(payload)
    except FramingError as exc:
        raise IntegrityError(f"{path}: chunk {i} {e.key_range}: bad payload: {exc}",
                             chunk=i) from None
    if (info.record_count, bytes(info.first_key), bytes(info.last_key), info.keys_xxh3) != (
            e.records, e.first_key, e.last_key, e.keys_xxh3):
        raise IntegrityError(
            f"{path}: chunk {i} {e.key_range}: records disagree with the index "
            f"(count, key range or key digest)", chunk=i)
    return info


def check_layout(reader: ArchiveReader, start: bytes = b"", end: bytes | None = None) -> None:
    """Raise the first structural problem of the index (chunk key ranges ordered and disjoint,
    members tiling the file): what restore and ls check before reading any chunk. Per chunk,
    not per record. A paged index (docs/FORMAT.md §11.3) has its root checked at open; here
    the pages that hold keys in [start, end) are read and checked."""
    problems = reader.index.layout_problems(reader.manifest_end,
                                            reader.trailer.index_offset, start, end)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise IntegrityError(f"{reader.path}: {first}{more}; run verify for details",
                             chunk=first.chunk, part=first.part)


def chain_identity(readers: Sequence[ArchiveReader]) -> list[str] | None:
    """Each open archive's file identity (`ArchiveReader.file_identity`: device, inode, size,
    modification and change times of the file it reads, not its path: a parent is found as
    `DIR/../p.tar.gz` from its child's directory). A file written since, even in place at its
    old size, or another file no longer matches. None when one is not a local file (an S3
    object is not trusted this way)."""
    out = [r.file_identity() for r in readers]
    return None if None in out else out  # type: ignore[return-value]


def _check_chunk(reader: ArchiveReader, i: int, deep: bool, blocks: list[Any] | None = None,
                 trusted: bool = False) -> tuple[int, int, int]:
    """Check chunk i; returns (bytes read, records, key and value bytes: 0 unless deep).
    Raises IntegrityError naming the chunk.
    `trusted` (quick only): a reference into a chain just verified by the caller: its entry is
    compared hop by hop with the chunk it resolves to and its catalog is found, nothing read."""
    e = reader.entry(i)
    if trusted and e.in_parent and not deep:
        reader.locate(i)
        if reader.index.catalog_count:
            reader.catalog_holder(i)
        return 0, e.records, 0
    if not deep:
        n = reader.check_member(i)
        if reader.index.catalog_count:
            reader.check_catalog_member(i)
        return n, e.records, 0
    # the member and the payload in this thread's reused buffers (archive.buffers)
    payload = reader.read_chunk(i, into=reader.reused_payload, gzip_crc=True)
    raw = check_payload(reader.path, i, e, payload).raw_bytes
    if reader.index.catalog_count:
        reader.read_catalog(i)
    if blocks is not None:
        from dsbackup.blockcheck import BlockTally, check_payload_blocks

        tally = BlockTally()
        check_payload_blocks(payload, f"{reader.path}: chunk {i}", i, tally)
        blocks.append(tally)
    if e.in_parent:
        holder, seq = reader.locate(i)
        return holder.entry(seq).length, e.records, raw
    return e.length, e.records, raw


def verify_archive(
    path: str | os.PathLike[str],
    *,
    deep: bool = True,
    sample: float | None = None,
    threads: int | None = None,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    parent_dirs: list[str | os.PathLike[str]] | None = None,
    check_blocks: bool = False,
    trusted_chain: Sequence[str] | None = None,
) -> VerifyReport:
    """Verify an archive; never raises for damage — the report lists every problem found
    (`ArchiveUnavailable` when there is no archive at `path`: missing, a directory).

    An incremental archive is checked with its parent chain (found beside it or in
    `parent_dirs`): referenced chunks are read from the parents. `check_blocks` (deep only)
    also re-hashes every `/blocks/<base32 sha2-256 multihash>` value against its key.

    `trusted_chain` (a quick verify only): the `checked_chain` of a verify that has just hashed,
    member by member, every chunk of this archive's parent. When this archive's parent chain is
    exactly those files, none of them written since (`chain_identity`), its references are
    resolved and compared with the entries they point to but their members are not read again
    (`trusted_chunks`); otherwise it is ignored and they are read."""
    t0 = time.perf_counter()
    mode = "deep" if deep and sample is None else ("sampled" if sample is not None else "quick")
    report = VerifyReport(path=display(path), mode=mode)
    try:
        reader = ArchiveReader(path, parent_dirs=parent_dirs, locked_ok=not deep
                               and sample is None)
    except (ArchiveUnavailable, UnsupportedArchive, KeyRequiredError, WrongKeyError,
            PlainArchiveError):
        raise  # nothing to check (missing, a directory, unreadable, not our version, no key)
    except (IntegrityError, ArchiveError) as exc:
        report.add(exc)
        report.duration_s = time.perf_counter() - t0
        return report
    if reader.locked:  # encrypted, no key: quick verify of the sealed members (§11.4)
        from dsbackup.archive.sealedcheck import walk_sealed

        with reader:
            report.mode = "quick-sealed"
            report.chunks = reader.trailer.chunk_count
            report.checked_chunks, report.bytes_checked, problems = walk_sealed(reader)
            for problem in problems:
                report.add(problem)
        report.duration_s = time.perf_counter() - t0
        return report
    with reader:
        reader.index.sequential()  # chunks in order: two index pages cached, not four
        report.chunks = reader.chunk_count
        for part in ("manifest", "summary"):
            try:
                getattr(reader, part)
            except IntegrityError as exc:
                report.add(exc)
        if reader.has_node:
            _check_node(reader, report, deep=deep or sample is not None)
        try:
            for problem in reader.index.check_layout(reader.manifest_end,
                                                     reader.trailer.index_offset):
                report.add(problem, reader)
        except IntegrityError as exc:
            report.add(exc)
        if report.ok:
            _check_summary(reader, report)
        trusted, identity = False, None
        if report.ok:
            try:
                chain = reader.open_parents()
                if chain is not None:
                    chain.require_catalogs()
                report.parents = [str(p) for p in chain.paths] if chain else []
                identity = chain_identity([reader, *(chain.levels if chain else ())])
                trusted = (not deep and sample is None and bool(trusted_chain)
                           and identity is not None and identity[1:] == list(trusted_chain))
                report.referenced_chunks = sum(refs for _, _, refs, _ in reader.index.totals())
            except (MissingParentError, IntegrityError) as exc:
                report.add(exc)
                if isinstance(exc, MissingParentError):
                    report.bad_parts.append("parent")
                report.bad_chunks.sort()
                report.duration_s = time.perf_counter() - t0
                return report
        check_blocks = check_blocks and deep
        deep_set: set[int] | None = None
        if sample is not None:
            if not 0 <= sample <= 1:
                raise ValueError("sample must be a fraction between 0 and 1")
            n = reader.chunk_count
            k = min(n, max(1 if n and sample > 0 else 0, round(n * sample)))
            import random  # only a sampled verify draws (not a deep one's start-up)

            deep_set = set(random.Random(seed).sample(range(n), k))
        workers = threads or min(8, os.cpu_count() or 1)
        lock = threading.Lock()
        # every chunk's member and catalog, in order: an S3 archive and its S3 parents fetch
        # just those (of a parent, the chunks referenced), coalesced
        plan_chunk_reads(reader, range(reader.chunk_count), catalogs=True,
                         parents=not trusted)

        def task(i: int) -> tuple[int, int, int, IntegrityError | None]:
            d = deep if deep_set is None else i in deep_set
            blocks: list[Any] | None = [] if check_blocks and d else None
            try:
                nbytes, recs, raw = _check_chunk(reader, i, d, blocks, trusted)
                if blocks:
                    with lock:
                        tally = blocks[0]
                        report.blocks_checked += tally.checked
                        for reason, cnt in tally.unchecked.items():
                            report.blocks_unchecked[reason] = \
                                report.blocks_unchecked.get(reason, 0) + cnt
                            report.blocks_unchecked_examples.setdefault(
                                reason, tally.examples[reason].decode("ascii", "replace"))
                return nbytes, recs if d else 0, raw, None
            except (IntegrityError, MissingParentError) as exc:
                return 0, 0, 0, exc

        done = raw_bytes = 0
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        results = (ordered_map(pool, task, range(reader.chunk_count), 4 * workers)
                   if pool is not None else map(task, range(reader.chunk_count)))
        try:
            for i, (nbytes, recs, raw, exc) in enumerate(results):
                done += 1
                if exc is not None:
                    report.add(exc, reader)
                else:
                    report.checked_chunks += 1
                    report.bytes_checked += nbytes
                    raw_bytes += raw
                    if trusted and reader.entry(i).in_parent:
                        report.trusted_chunks += 1
                    if recs or (deep and deep_set is None) or (deep_set and i in deep_set):
                        report.deep_checked_chunks += 1
                        report.records += recs
                if progress is not None:
                    progress(done, reader.chunk_count)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    said = reader.summary.get("raw_bytes") if report.ok else None
    if (deep and deep_set is None and report.checked_chunks == report.chunks
            and isinstance(said, int) and said != raw_bytes):
        # what no index field holds: the records' key and value bytes (docs/FORMAT.md §7)
        report.add(IntegrityError(f"{reader.path}: summary says raw_bytes={said!r} but the "
                                  f"chunks hold {raw_bytes!r}", part="summary"))
    report.bad_chunks.sort()
    if (report.ok and report.checked_chunks == report.chunks and not report.trusted_chunks
            and identity is not None):
        report.checked_chain = identity
    report.duration_s = time.perf_counter() - t0
    return report


def _check_node(reader: ArchiveReader, report: VerifyReport, *, deep: bool) -> None:
    """The node member (docs/FORMAT.md §11.2): quick checks the member (CRC, sizes, data
    XXH3); deep also parses every entry (paths, order, kinds, sizes)."""
    try:
        if deep:
            files = reader.node_files()
            report.node_files = len(files)
            report.node_bytes = len(reader.node_data())
        else:
            report.node_bytes = len(reader.node_data())
    except IntegrityError as exc:
        exc.part = "node"
        report.add(exc)


def _check_summary(reader: ArchiveReader, report: VerifyReport) -> None:
    for problem in summary_problems(reader, "manifest" not in report.bad_parts):
        report.add(problem)
