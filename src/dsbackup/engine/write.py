"""The write loop every dsbackup-format backup runs: a chunk stream into one archive.

A chunk stream is a store-or-reference policy applied to the store's chunks, in key order:

- a full backup (dsbackup.engine.full) stores every chunk: its items are compressed chunks;
- an incremental (dsbackup.engine.incremental) references the chunks its parent holds and
  stores the others: its items are :class:`Reference` s and compressions still running
  (futures), written in key order as they finish, at most ``max_pending`` of them waiting.

The loop writes each item, reports progress, honours the cancel event, then writes the summary
and lets the archive writer check, fsync and rename the file (docs/FORMAT.md).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from typing import Any, NamedTuple, Protocol

from dsbackup import codec as codecs
from dsbackup._ext.framing import FramingError
from dsbackup.archive.index import ChunkEntry
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.engine.manifest import ScanOutcome, manifest_for, metadata_for, summary_for
from dsbackup.engine.plan import BackupPlan
from dsbackup.errors import BackupError, Cancelled
from dsbackup.metadata import BackupMetadata, Progress
from dsbackup.pipeline.chunks import compress_chunk


class Reference(NamedTuple):
    """A chunk the parent chain holds: the parent's seq and entry, and its raw bytes."""

    seq: int
    entry: ChunkEntry
    raw_bytes: int


class References(NamedTuple):
    """Consecutive chunks the parent chain holds, at once: the first parent seq, their
    entries in the parent's index (ENTRY_DTYPE rows), the keys blob those point into (an
    index block: ArchiveReader.index.block), and their raw bytes together."""

    seq: int
    entries: Any
    keys: Any
    raw_bytes: int


def store_or_reference(chunks: Iterator[Any], match: Any, pool: Executor, level: int,
                       catalog: bool, counts: Any) -> Iterator[Reference | Future]:
    """An incremental's items for framed chunks read from the store: a Reference where the
    parent chain holds an equal chunk (``match.chunk``), else the chunk's compression
    submitted to `pool`; ``counts`` tallies read, referenced and stored."""
    for c in chunks:
        counts.read += 1
        hit = match.chunk(c)
        if hit is not None:
            counts.referenced += 1
            yield Reference(hit[0], hit[1], c.raw_bytes)
        else:
            counts.stored += 1
            yield pool.submit(compress_chunk, c, level, catalog)


class ChunkStream(Protocol):
    """The chunks of one backup in key order. Entered before the archive is opened, left
    after it is closed; `outcome()` is asked once `items()` is exhausted."""

    max_pending: int

    def __enter__(self) -> ChunkStream: ...

    def __exit__(self, *exc: object) -> None: ...

    def items(self) -> Iterator[Any]:
        """Compressed chunks (ReadyChunk), futures of them, Reference or References."""
        ...

    def outcome(self) -> ScanOutcome: ...


def write_archive(plan: BackupPlan, stream: ChunkStream) -> BackupMetadata:
    """Write `stream` as the archive `plan` describes; its metadata."""
    cfg = plan.cfg
    resume = plan.resume  # a killed backup's temp file, continued: its manifest is kept
    manifest = resume.state.manifest if resume is not None else manifest_for(plan)
    with stream, ArchiveWriter(plan.path, manifest=manifest,
                               level=codecs.deflate_level(cfg.chunk_level),
                               codec=cfg.codec,
                               created=plan.created.timestamp(),
                               parent_fingerprint=plan.parent_fingerprint,
                               overwrite=cfg.overwrite,
                               node=None if plan.node is None else plan.node.data,
                               key=cfg.encryption, kdf=plan.kdf,
                               page_entries=plan.page_entries,
                               resume=None if resume is None else resume.state,
                               sink=None if resume is None else resume.sink,
                               keep_when_cancelled=cfg.resume) as writer:
        _copy(plan, stream, writer)
        if plan.cancel.is_set():
            raise Cancelled("backup cancelled")
        outcome = stream.outcome()
        if resume is not None and resume.late_raw_bytes:  # a resumed incremental's references
            writer.count_raw_bytes(resume.late_raw_bytes)
        written = writer.finish(summary_for(plan, outcome), before_rename=plan.check)
    return metadata_for(plan, manifest, writer.version, written, outcome)


def _copy(plan: BackupPlan, stream: ChunkStream, writer: ArchiveWriter) -> None:
    """Every item of the stream into the writer, in order."""
    cancel, progress, catalog = plan.cancel, plan.progress, plan.catalog
    total_records, total_bytes = plan.totals
    kept = plan.resume.state if plan.resume is not None else None  # a resumed file's chunks
    done = [0, 0] if kept is None else [kept.records, kept.raw_bytes]  # records, raw bytes

    def write(item: Any) -> None:
        if isinstance(item, Reference):
            writer.add_reference(item.seq, item.entry, item.raw_bytes, catalog=catalog)
            done[0] += item.entry.records
            done[1] += item.raw_bytes
        elif isinstance(item, References):
            writer.add_references(item.seq, item.entries, item.keys, item.raw_bytes,
                                  catalog=catalog)
            done[0] += int(item.entries["records"].sum(dtype="u8"))
            done[1] += item.raw_bytes
        else:
            c = item.result() if isinstance(item, Future) else item
            writer.add_chunk(c, c.catalog_body, c.catalog_xxh3)
            done[0] += c.record_count
            done[1] += c.raw_bytes
        if progress is not None:
            progress(Progress(done[0], done[1], writer.chunk_count,
                              time.perf_counter() - plan.t0, total_records, total_bytes))

    window: deque[Any] = deque()  # items in key order; futures may still be running
    pending = 0
    try:
        for item in stream.items():
            if cancel.is_set():
                raise Cancelled("backup cancelled")
            window.append(item)
            pending += isinstance(item, Future)
            while window and (pending > stream.max_pending
                              or not isinstance(window[0], Future) or window[0].done()):
                head = window.popleft()
                pending -= isinstance(head, Future)
                write(head)
        while window:
            write(window.popleft())
    except FramingError as exc:
        raise BackupError(f"{plan.source.get('uri')}: {exc}") from exc
    finally:
        for item in window:
            if isinstance(item, Future):
                item.cancel()
