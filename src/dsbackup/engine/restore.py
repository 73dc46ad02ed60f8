"""Restore an archive into a datastore: chunks inflated and checked in parallel threads (native,
GIL released), records written in large sorted batches, resumable after a crash.

A journal file beside a filesystem target (`<target>.dsbackup-restore.json`) records which
chunks are committed; rerunning the same restore after a kill continues from there and ends
with exactly the archive's records. No record of a chunk is written before all of that chunk's
checksums pass.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsbackup._plain import Plain
from dsbackup.archive import format as fmt
from dsbackup.archive import guard
from dsbackup.archive.buffers import PayloadRing
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.readplan import plan_chunk_reads
from dsbackup.archive.summarycheck import check_references, check_summary
from dsbackup.archive.verify import check_layout, check_payload
from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.engine.newtarget import NewTarget
from dsbackup.engine.restore_journal import JournalSync, journal_path, write_journal
from dsbackup.engine.restore_node import restore_node
from dsbackup.engine.restore_records import chunk_records
from dsbackup.engine.restore_staged import STAGED_BATCH_BYTES, write_staged
from dsbackup.engine.targetdir import refuse_foreign_directory
from dsbackup.engine.targetlock import TargetLock, store_path
from dsbackup.errors import (
    ConfigError,
    DatastoreError,
    IntegrityError,
    InvalidKey,
    RestoreError,
    TargetNotEmpty,
)
from dsbackup.keys import Key, children_range
from dsbackup.metadata import Progress, RestoreResult
from dsbackup.patterns import KeyMatcher, key_matcher
from dsbackup.poolmap import ordered_map
from dsbackup.storage import display, is_remote
from dsbackup.storage.writeback import start_writeback

log = logging.getLogger(__name__)

MODES = ("empty", "overwrite", "skip_existing")
DEFAULT_BATCH_BYTES = 64 << 20
# the native LMDB writer's transactions: small, so the first is written while the pool still
# inflates and LMDB's dirty pages (malloc'd, pwritten at commit) are reused, not faulted in;
# 2 MiB rather than 4: the writer reads each payload sooner after it was inflated, and the
# last batch, written after the pool is done, is shorter (docs/PERFORMANCE.md, "Small
# records: restore and backup bounds")
NATIVE_BATCH_BYTES = 2 << 20
# payload bytes the pool may hold ahead of the batch being written, in batches: with one, the
# pool stopped whenever it was a batch ahead and one core idled while the batch was written
# (docs/PERFORMANCE.md, "Restore and deep verify at quarter scale, fresh profile"); 6 × 2 MiB
# is the 12 MiB of the 4 MiB × 3 before
NATIVE_BATCHES_AHEAD = 6
# The journal records progress only after a sync of the target, and a sync waits for the disk:
# batches are written every DEFAULT_BATCH_BYTES, synced and journaled at most this often (for
# LMDB targets in a thread while the restore goes on: restore_journal.JournalSync).
JOURNAL_INTERVAL_S = 1.0
# the payload ring's room beyond the payloads ahead and the batch, for the chunk that crosses a batch's end,
# the one held back by the budget, tar headers and padding, and the end of the ring a region
# does not fit into. Tight on purpose: its pages are all resident once it has gone round; a
# region that does not fit gets a mapping of its own (5 of 2,320 chunks of 256 KiB blocks)
RING_SLACK = 2 << 20


class _Writes(Plain):
    """What one run did: `started`, whether a write into the target was made that may have
    left records in it (a failed put_many of a store whose batches are not atomic
    included); `records` and `nbytes`, the archive's records (and their key and value bytes)
    it put or, with skip_existing, skipped; `expected`, the records of the chunks it went
    through (their index entries)."""

    __slots__ = ("started", "records", "nbytes", "expected")
    started: bool
    records: int
    nbytes: int
    expected: int

    def __init__(self, started: bool = False, records: int = 0, nbytes: int = 0,
                 expected: int = 0) -> None:
        self.started = started
        self.records = records
        self.nbytes = nbytes
        self.expected = expected


def prefix_bounds(prefix: str | bytes | None) -> tuple[bytes, bytes | None]:
    """Key range of a go-datastore prefix query: children only (`/a` holds `/a/b`, not `/ab`)."""
    return children_range(prefix)


def _journal_path(target: Any) -> Path | None:
    """`<target>.dsbackup-restore.json` beside the target's filesystem path (from the URI's
    location: never its `?k=v` parameters); None for a memory store."""
    return journal_path(store_path(target))


@contextmanager
def _no_space_is_an_error(target: Any, needed: int | None = None) -> Iterator[None]:
    """A full filesystem while writing the target (`needed`: the bytes of the batch being
    written): a DatastoreError naming it (exit 2); the journal still names the last synced
    chunk, so a rerun after freeing space resumes."""
    try:
        yield
    except OSError as exc:
        if not is_no_space(exc):
            raise
        where = store_path(target) or getattr(target, "uri", "target")
        raise DatastoreError(no_space_message(
            where, needed, what="free some space and rerun the same restore: it resumes")
        ) from None


def _decoded_chunks(reader: ArchiveReader, chunk_ids: list[int], threads: int,
                    start: bytes, end: bytes | None, matcher: KeyMatcher | None,
                    cancel: threading.Event) -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """Decode chunks in parallel, yield them in order; at most 2 × threads in flight."""

    def work(i: int) -> tuple[int, list[bytes], list[bytes]]:
        return (i, *chunk_records(reader, i, start, end, matcher))

    return _in_order(work, chunk_ids, threads, cancel)


def _checked_payloads(reader: ArchiveReader, chunk_ids: range, threads: int,
                      cancel: threading.Event, window: int, budget: int, ring: PayloadRing,
                      ) -> Iterator[tuple[int, memoryview, int | None]]:
    """Verified chunk payloads in order, not decoded (the native LMDB writer parses them),
    each with its `ring` token (release it once the payload is written); at most `window`
    chunks and `budget` payload bytes (one chunk at least) in flight, so the pool keeps
    inflating while a batch is written and its memory does not depend on how large a run of
    consecutive chunks happens to be. Each chunk is decoded into a region of `ring` taken
    here, in chunk order, as the chunk is submitted: no allocation per chunk."""

    def work(item: tuple[int, memoryview, int | None]) -> tuple[int, memoryview, int | None]:
        i, region, token = item

        def into(n: int) -> memoryview:  # n is at most the region's size (the codecs' sizes)
            return region[:n] if n <= len(region) else memoryview(bytearray(n))

        payload = reader.read_chunk(i, into=into)
        # count, keys in order and inside the chunk's range, key digest: natively, GIL
        # released, before the writer sees the chunk
        check_payload(reader.path, i, reader.entry(i), payload)
        return i, payload, token

    def regions() -> Iterator[tuple[int, memoryview, int | None]]:
        for i in chunk_ids:
            # what any codec decodes a chunk into: the tar entry (header, payload, padding)
            region, token = ring.take(fmt.TAR_BLOCK + fmt.padded(reader.entry(i).payload_len))
            yield i, region, token

    return _in_order(work, regions(), threads, cancel, window,
                     lambda item: reader.entry(item[0]).payload_len, budget)


def _in_order(work: Callable[[Any], Any], chunk_ids: Iterable[Any], threads: int,
              cancel: threading.Event, window_size: int = 0,
              cost: Callable[[Any], int] | None = None, budget: int = 0) -> Iterator[Any]:
    """Run work(i) in a thread pool, yield the results in order; at most window_size
    (default 2 × threads) in flight, and at most `budget` of cost(i) when given."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dsbackup-inflate") as pool:
        yield from ordered_map(pool, work, chunk_ids, max(window_size, 2 * threads),
                               cancel=cancel, cancelled="restore cancelled", cost=cost,
                               budget=budget)


class _NativeLmdbTarget:
    """An LMDB target written by :class:`LmdbPayloadWriter` (no py-lmdb open): what _restore
    needs of a datastore (uri, is_empty, sync, close) plus the writer."""

    def __init__(self, path: str, map_size: int) -> None:
        from dsbackup._ext.lmdbwrite import LmdbPayloadWriter

        p = Path(path).absolute()
        self.uri = f"lmdb:{p}"
        if p.exists() and not p.is_dir():  # its mkdir would say "File exists"
            raise DatastoreError(f"{p}: not a directory (LMDB is a directory)")
        from dsbackup.datastores.lmdblockfile import reserve_lock_file

        p.mkdir(parents=True, exist_ok=True)
        reserve_lock_file(p)  # a full disk: a message, not SIGBUS in LMDB's open
        # its errors (LmdbWriteError, DoubleOpenError) are DatastoreErrors naming the path;
        # pages are copied into LMDB's dirty pages and written with pwrite, not through the
        # map: a write fault on a mapped page makes the kernel zero (read) it first, which
        # cost a restore up to twice its CPU time (docs/PERFORMANCE.md, "Restore")
        self.writer = LmdbPayloadWriter(str(p), map_size=map_size, writemap=False)
        # a read-only descriptor of the data file, to start its writeback early and sync it
        # from another thread (LMDB's own sync may not run beside a write that grows the map)
        try:
            self.data_fd = os.open(p / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.data_fd = -1

    def start_writeback(self) -> None:
        """Have the kernel start writing the committed pages to disk (no wait), so that the
        next sync has little left to do."""
        if self.data_fd >= 0:
            start_writeback(self.data_fd)

    def is_empty(self) -> bool:
        return bool(self.writer.is_empty())

    def sync(self, prefix: object = "/") -> None:
        self.writer.sync()

    def close(self) -> None:
        if self.data_fd >= 0:
            os.close(self.data_fd)
            self.data_fd = -1
        self.writer.close()


def _native_lmdb_path(target: str | os.PathLike[str], mode: str, prefix: object,
                      pattern: object) -> tuple[str, int] | None:
    """(path, map size) when `target` is an lmdb: URI the native writer can restore into:
    mode empty (a resumed restore included), no prefix or pattern, only the map_size and
    sync parameters."""
    from dsbackup.datastores.registry import parse_uri

    if mode != "empty" or prefix is not None or pattern:
        return None
    scheme, loc, params = parse_uri(os.fspath(target))
    if scheme != "lmdb" or not loc or not set(params) <= {"map_size", "sync"}:
        return None
    try:
        map_size = int(params.get("map_size", 0))
    except ValueError:
        return None
    return loc, map_size


def restore_archive(
    path: str | os.PathLike[str],
    target: Any,
    *,
    workers: int = 2,
    mode: str = "empty",
    prefix: str | bytes | None = None,
    pattern: str | list[str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    batch_bytes: int | None = None,
    resume: bool = True,
    parent_dirs: list[str | os.PathLike[str]] | None = None,
) -> RestoreResult:
    """Restore `path` into `target` (URI or datastore object).

    mode: "empty" (default; the target must be empty, or hold a resumable restore of the same
    archive), "overwrite" (archive values replace existing ones), "skip_existing" (keys already
    in the target are left alone). prefix/pattern restore a subset (prefix: children of a key;
    pattern: globs as in exclude_patterns). An incremental archive needs its parent chain
    (beside it or in `parent_dirs`); a missing parent fails before the target is touched.
    batch_bytes: payload bytes per write (default NATIVE_BATCH_BYTES for the native LMDB
    writer, which holds at most (NATIVE_BATCHES_AHEAD + 1) × batch_bytes of payloads;
    STAGED_BATCH_BYTES per commit into flatfs or a Kubo repo; else DEFAULT_BATCH_BYTES).
    """
    if mode not in MODES:
        raise ConfigError(f"restore mode must be one of {', '.join(MODES)}, got {mode!r}")
    if pattern is not None and "" in ([pattern] if isinstance(pattern, str) else pattern):
        # as an empty exclude pattern is: it restored nothing into a new store, exit 1
        raise ConfigError("empty pattern (a glob of whole keys, such as /blocks/**)")
    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    from dsbackup.compat.gohead import is_go_archive

    guard.check_target_outside(target, [path])
    refuse_foreign_directory(target)  # lmdb:~ by mistake: data.mdb among someone's files
    new = NewTarget(target)  # a failure that left no records leaves the target as it was
    if not is_remote(path) and is_go_archive(path):
        from dsbackup.compat.restore_go import restore_go_archive

        try:
            with TargetLock(target, f"restore of {Path(path).name}"):
                new.recheck()
                try:
                    return restore_go_archive(path, target, mode=mode, prefix=prefix,
                                              pattern=pattern,
                                              batch_bytes=batch_bytes or DEFAULT_BATCH_BYTES,
                                              progress=progress, cancel=cancel)
                except BaseException:
                    # no journal, no resume: a new store holds nothing a rerun could use
                    new.remove_store()
                    raise
        except BaseException:
            new.remove_parents()
            raise
    reader = ArchiveReader(path, parent_dirs=parent_dirs)
    reader.index.sequential()  # chunks in order: two index pages cached, not four
    try:
        # chunk ranges ordered and disjoint, before the target is touched (of a paged index:
        # the pages holding the prefix, docs/FORMAT.md §11.3)
        check_layout(reader, *prefix_bounds(prefix))
        # the summary against the index (a chunk rewritten with its checksums: docs/FORMAT.md
        # §7): O(chunks), no payload read; a prefix restore of a paged index would read
        # every page for it, so unless its range spans them all it checks only the chunks
        # it restores, each against its page (docs/CLI.md restore)
        whole = (prefix is None or not reader.index.paged or reader.index.chunks_overlapping(
            *prefix_bounds(prefix)) == range(reader.chunk_count))
        if whole:
            check_summary(reader, "nothing was restored")
        reader.node_files()  # a damaged or hostile node member: exit 3 before anything is written
        chain = reader.open_parents()
        guard.check_target_outside(target, chain.paths if chain else [])
        if chain is not None and whole and (prefix is None or not any(
                r.index.paged for r in chain.levels)):
            # every reference against the entry it names, hop by hop, before anything is
            # written (locate checks each again as its chunk is read)
            check_references(reader, chain, "nothing was restored")
    except BaseException:
        reader.close()
        raise
    lock = TargetLock(target, f"restore of {display(path)}")
    try:
        lock.acquire()  # a second writer of the target gets exit 4 naming this process
    except BaseException:
        reader.close()
        raise
    new.recheck()
    failed = False
    try:
        return _open_and_restore(reader, target, workers=workers, mode=mode, prefix=prefix,
                                 pattern=pattern, progress=progress, cancel=cancel,
                                 batch_bytes=batch_bytes, resume=resume, t0=t0)
    except BaseException:
        # its journal gone: nothing was written (else it stays, and a rerun finishes)
        jpath = _journal_path(target)
        failed = jpath is None or not jpath.exists()
        if failed:
            new.remove_store()
        raise
    finally:
        reader.close()
        lock.release()
        if failed:
            new.remove_parents()


def _new_repo_params(reader: ArchiveReader, target: str) -> dict[str, str]:
    """A ``helia:`` target without ``datastore=`` that is made new gets the datastore kind
    of the archive's source (``helia:PATH?datastore=level``): Helia opens one kind only, and
    a datastore-level node given datastore-fs files would start empty, with a new identity."""
    from dsbackup.datastores.helia import source_datastore_kind
    from dsbackup.datastores.registry import parse_uri

    scheme, _, params = parse_uri(target)
    if scheme != "helia" or "datastore" in params:
        return {}
    source = reader.manifest.get("source")
    kind = source_datastore_kind(str(source.get("uri", ""))) if isinstance(source, dict) else None
    return {"new_datastore": kind} if kind else {}


def _open_and_restore(reader: ArchiveReader, target: Any, *, workers: int, mode: str,
                      prefix: str | bytes | None, pattern: str | list[str] | None,
                      progress: Callable[[Progress], None] | None, cancel: threading.Event,
                      batch_bytes: int, resume: bool, t0: float) -> RestoreResult:
    owned = False
    native = None
    node_files, node_note = restore_node(reader, target, mode, _journal_path(target))
    if isinstance(target, (str, os.PathLike)):
        lmdb_target = _native_lmdb_path(target, mode, prefix, pattern)
        if lmdb_target is not None:
            loc, map_size = lmdb_target
            if not map_size:
                used = Path(loc, "data.mdb")
                map_size = max(64 << 20, 2 * used.stat().st_size if used.is_file() else 0,
                               int(reader.summary.get("raw_bytes") or 0) * 3 // 2)
            target = native = _NativeLmdbTarget(loc, map_size)
        else:
            from dsbackup.datastores import open_datastore

            target = open_datastore(str(target), readonly=False,
                                    **_new_repo_params(reader, str(target)))
        owned = True
    if batch_bytes is None:
        batch_bytes = (NATIVE_BATCH_BYTES if native is not None
                       else STAGED_BATCH_BYTES if _stages_files(target, mode)
                       else DEFAULT_BATCH_BYTES)
    jpath = _journal_path(target)
    fresh = jpath is not None and not jpath.exists()  # this run writes the journal
    writes = _Writes()
    try:
        result = _restore(reader, target, workers=workers, mode=mode, prefix=prefix,
                          pattern=pattern, progress=progress, cancel=cancel,
                          batch_bytes=batch_bytes, resume=resume, t0=t0, native=native,
                          writes=writes)
    except InvalidKey as exc:
        # the archive holds a key this kind of store cannot (flatfs: /pins/...): resuming
        # would fail at the same key, and the journal would only block another restore into
        # the target ("an unfinished restore of another archive"). Unless records before it
        # are in the target: it then holds part of the archive, and the journal keeps a
        # backup from taking it for a whole store
        if jpath is None:
            raise
        if not (writes.started or not fresh or node_files) or (
                mode == "empty" and _still_empty(target)):
            jpath.unlink(missing_ok=True)
            raise
        raise InvalidKey(f"{exc}; the records before it were written, so the target holds "
                         f"part of the archive: its restore journal {jpath} is kept (a "
                         "backup of it is refused); restore into a store that takes any key "
                         "(lmdb:, sqlite:, a kubo: repo), or remove the target") from None
    except BaseException:
        # failed or stopped before this run wrote anything (a damaged first chunk, Ctrl-C,
        # a first batch the disk refused whole), into any target, --overwrite included: the
        # target is as it was, and its journal would only refuse a backup of it and a
        # restore of another archive into it. An empty target, whatever was tried. Kept when
        # a write may have left records (or the node's files were replaced): the target then
        # holds part of the archive, and a rerun finishes it (docs/CLI.md restore)
        if fresh and (not writes.started and not node_files
                      or mode == "empty" and _still_empty(target)):
            jpath.unlink(missing_ok=True)  # type: ignore[union-attr]
        raise
    finally:
        if owned:
            target.close()
    result.node_files, result.node_note = node_files, node_note
    return result


def _stages_files(target: Any, mode: str) -> bool:
    """A target whose records are files written in the inflate threads (restore_staged.py):
    flatfs, or a mount holding one (a Kubo repo), unless skip_existing asks about each key."""
    return bool(getattr(target, "stages_files", False)) and mode != "skip_existing"


def _still_empty(target: Any) -> bool:
    try:
        return bool(target.is_empty())
    except Exception:  # noqa: BLE001 - cannot tell: the journal stays
        return False


def _restore(reader: ArchiveReader, target: Any, *, workers: int, mode: str,
             prefix: str | bytes | None, pattern: str | list[str] | None,
             progress: Callable[[Progress], None] | None, cancel: threading.Event,
             batch_bytes: int, resume: bool, t0: float,
             native: _NativeLmdbTarget | None = None,
             writes: _Writes | None = None) -> RestoreResult:
    writes = writes if writes is not None else _Writes()
    fingerprint = reader.summary.get("fingerprint", "")
    result = RestoreResult(archive=str(reader.path), target=getattr(target, "uri", str(target)),
                           chunks_total=reader.chunk_count, fingerprint=fingerprint)
    start, end = prefix_bounds(prefix)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
    matcher = key_matcher(patterns, "pattern")
    options = {"mode": mode, "prefix": None if prefix is None else str(Key(prefix)),
               "pattern": patterns}
    jpath = _journal_path(target)
    first_chunk = 0
    resumed = jpath is not None and jpath.exists()
    if resumed:
        try:
            state = json.loads(jpath.read_text())
        except (OSError, ValueError) as exc:
            raise RestoreError(f"{jpath}: unreadable restore journal ({exc}); remove it and "
                               "restore into an empty target") from None
        if state.get("fingerprint") != fingerprint or state.get("options") != options:
            raise RestoreError(
                f"{jpath}: the target holds an unfinished restore of another archive or with "
                "other options; finish that restore, or remove the journal and the target")
        if not resume:
            raise RestoreError(f"{jpath}: an unfinished restore exists; rerun with resume")
        first_chunk = int(state.get("next_chunk", 0))
        result.resumed_from_chunk = first_chunk
        log.info("resuming restore into %s at chunk %d", result.target, first_chunk)
        write_mode = "overwrite" if mode == "empty" else mode
    else:
        if mode == "empty" and not target.is_empty():
            raise TargetNotEmpty(
                f"{result.target}: target datastore is not empty; restore into an empty "
                "store, or choose mode overwrite or skip_existing", target=result.target)
        write_mode = mode
    state = {"fingerprint": fingerprint, "archive": str(reader.path), "options": options,
             "next_chunk": first_chunk}
    if jpath is not None and native is None:  # the native path writes it in a thread
        write_journal(jpath, state)
    span = reader.index.chunks_overlapping(start, end)  # a range: O(1) memory at any size
    selected = range(max(span.start, first_chunk), max(span.stop, first_chunk))
    # an S3 archive (and each S3 parent) fetches exactly these chunks' members, coalesced,
    # not 8 MiB blocks and their read-ahead past a prefix's end (docs/STORAGE.md "Reading")
    plan_chunk_reads(reader, selected)
    whole = prefix is None and not patterns  # what the summary's totals describe
    if native is not None:
        _write_native(reader, native, selected, first_chunk, workers=workers, cancel=cancel,
                      progress=progress, batch_bytes=batch_bytes, jpath=jpath, state=state,
                      result=result, t0=t0, writes=writes)
        if whole:
            _check_counts(reader, result, writes, selected, first_chunk,
                          jpath if writes.started or resumed else None, state)
        return _finish(target, jpath, result, t0)
    if _stages_files(target, mode):
        write_staged(reader, target, selected, workers=workers, cancel=cancel,
                     progress=progress, batch_bytes=batch_bytes,
                     jpath=jpath, state=state, result=result, t0=t0, start=start, end=end,
                     matcher=matcher, no_space=_no_space_is_an_error, writes=writes)
        if whole:
            _check_counts(reader, result, writes, selected, first_chunk,
                          jpath if writes.started or resumed else None, state)
        return _finish(target, jpath, result, t0)
    total_bytes = reader.summary.get("raw_bytes")
    keys_acc: list[bytes] = []
    values_acc: list[bytes] = []
    acc_bytes = 0
    last_chunk = first_chunk - 1

    def flush() -> None:
        nonlocal keys_acc, values_acc, acc_bytes
        if keys_acc:
            if write_mode == "skip_existing":
                keep = [j for j, k in enumerate(keys_acc) if not target.has(k)]
                result.records_skipped += len(keys_acc) - len(keep)
                keys_w = [keys_acc[j] for j in keep]
                values_w = [values_acc[j] for j in keep]
            else:
                keys_w, values_w = keys_acc, values_acc
            nbytes = sum(map(len, keys_w)) + sum(map(len, values_w))
            if keys_w:
                before, writes.started = writes.started, True
                try:
                    with _no_space_is_an_error(target, nbytes):
                        target.put_many(keys_w, values_w)
                except BaseException:
                    if getattr(target, "atomic_put_many", False):
                        writes.started = before  # nothing of this batch is in the target
                    raise
            result.records_written += len(keys_w)
            result.bytes_written += nbytes
            writes.records += len(keys_acc)
            writes.nbytes += nbytes if keys_w is keys_acc else (
                sum(map(len, keys_acc)) + sum(map(len, values_acc)))
        if jpath is not None:
            with _no_space_is_an_error(target):
                target.sync("/")
            state["next_chunk"] = last_chunk + 1
            write_journal(jpath, state)
        keys_acc, values_acc, acc_bytes = [], [], 0

    for i, keys, values in _decoded_chunks(reader, selected, max(1, workers), start, end,
                                           matcher, cancel):
        keys_acc += keys
        values_acc += values
        e = reader.entry(i)
        acc_bytes += e.payload_len
        writes.expected += e.records
        last_chunk = i
        result.chunks += 1
        if acc_bytes >= batch_bytes:
            flush()
        if progress is not None:
            progress(Progress(result.records_written + len(keys_acc),
                              result.bytes_written + acc_bytes, result.chunks,
                              time.perf_counter() - t0, reader.summary.get("records"),
                              total_bytes))
    if selected:
        last_chunk = max(last_chunk, selected[-1])
    flush()
    if whole:
        _check_counts(reader, result, writes, selected, first_chunk,
                      jpath if writes.started or resumed else None, state)
    return _finish(target, jpath, result, t0)


def _check_counts(reader: ArchiveReader, result: RestoreResult, writes: _Writes,
                  selected: range, first_chunk: int, jpath: Path | None,
                  state: dict[str, Any]) -> None:
    """A whole restore (no prefix or pattern) went through every chunk and the archive's
    records: from chunk 0, the summary's `records` and `raw_bytes` (key and value bytes);
    resumed, the records its chunks' index entries count. Otherwise the target need not hold
    the archive's state, whatever each chunk's checks said (a restore that lost or repeated
    records, a summary that does not describe these chunks): IntegrityError (exit 3), not
    "OK". `jpath`: the journal when the target holds records of this restore (this run
    wrote some, or an earlier one): set back to chunk 0 and kept, so the target is not
    backed up as whole and a rerun restores and counts everything again."""
    s = reader.summary
    want: list[tuple[str, object, int]] = [("chunks", len(selected), result.chunks)]
    if first_chunk == 0:
        want.append(("records", s.get("records"), writes.records))
        if isinstance(s.get("raw_bytes"), int):
            want.append(("key and value bytes", s["raw_bytes"], writes.nbytes))
    else:
        want.append(("records", writes.expected, writes.records))
    wrong = [f"{got:,} {what} where {'its summary' if first_chunk == 0 else 'the index'} "
             f"says {expected:,}" for what, expected, got in want
             if got != expected and isinstance(expected, int)]
    if not wrong:
        return
    kept = "; nothing was written into it"
    if jpath is not None:
        write_journal(jpath, {**state, "next_chunk": 0})
        kept = (f"; its restore journal {jpath} is kept (a backup of the target is refused "
                "while it is there): run dsbackup verify on the archive, then the same "
                "restore again (it starts over)")
    raise IntegrityError(f"{result.target}: the restore of {reader.path} went through "
                         f"{'; '.join(wrong)}: the target may not hold the archive's state"
                         f"{kept}", part="summary")


def _write_native(reader: ArchiveReader, native: _NativeLmdbTarget, selected: range,
                  first_chunk: int, *, workers: int, cancel: threading.Event,
                  progress: Callable[[Progress], None] | None, batch_bytes: int,
                  jpath: Path | None, state: dict[str, Any], result: RestoreResult,
                  t0: float, writes: _Writes) -> None:
    """The restore loop of an LMDB target written natively: verified payloads are batched
    (batch_bytes) into one LmdbPayloadWriter.write each — no Python object per record —
    then synced and journaled like the datastore path."""
    from dsbackup._ext.lmdbwrite import LmdbKeyTooLong, LmdbNoSpace, PayloadError

    total_bytes = reader.summary.get("raw_bytes")
    payloads: list[memoryview] = []
    chunk_ids: list[int] = []
    # the payloads in flight and in the batch being written, decoded into one mapping
    # reused from start to end (archive.buffers): at most (NATIVE_BATCHES_AHEAD + 1) x
    # batch_bytes and a chunk or two
    ring = PayloadRing((NATIVE_BATCHES_AHEAD + 1) * batch_bytes + RING_SLACK)
    token: int | None = None  # the ring token of the batch's last payload
    acc_bytes = acc_records = 0
    last_chunk = first_chunk - 1
    journaled = time.monotonic()
    syncer = (JournalSync(native.data_fd, jpath, state, native.uri)
              if jpath is not None and native.data_fd >= 0 else None)
    # the first journal is written (and fsynced) while the pool inflates the first batch;
    # the first write waits for it, so no record reaches the target before the journal
    first_journal = syncer is not None
    if first_journal:
        syncer.start(first_chunk, sync_target=False)
    elif jpath is not None:
        write_journal(jpath, state)

    def flush(final: bool = False) -> None:
        nonlocal payloads, chunk_ids, acc_bytes, acc_records, journaled, first_journal, token
        if first_journal and syncer is not None:
            syncer.wait()
            first_journal = False
        if payloads:
            writes.started = True  # (a target of mode empty: _still_empty says the rest)
            try:
                try:
                    n, nbytes = native.writer.write(payloads, append=True, overwrite=True)
                except LmdbNoSpace:
                    if len(payloads) == 1:
                        raise
                    # the batch's reservation did not fit: chunk by chunk, each reserving
                    # only its own growth, as far as the disk allows
                    n = nbytes = 0
                    for j, p in enumerate(payloads):
                        try:
                            dn, db = native.writer.write([p], append=True, overwrite=True)
                        except PayloadError as exc:
                            exc.index = j
                            raise
                        n += dn
                        nbytes += db
            except PayloadError as exc:
                i = chunk_ids[exc.index]
                raise IntegrityError(f"{reader.path}: chunk {i} {reader.entry(i).key_range}: "
                                     f"{exc}", chunk=i) from None
            except LmdbKeyTooLong as exc:
                raise InvalidKey(f"{exc} ({native.writer.path})") from None
            except LmdbNoSpace as exc:
                raise DatastoreError(no_space_message(
                    native.writer.path, exc.needed, exc.free,
                    what="free some space and rerun the same restore: it resumes")) from None
            # any other LmdbWriteError is a DatastoreError naming the path and LMDB's code
            result.records_written += n
            result.bytes_written += nbytes
            writes.records += n
            writes.nbytes += nbytes
            native.start_writeback()
            ring.release(token)  # the writer copied the values: their regions are free
            token = None
        if final:
            # everything is written: one sync, then _finish removes the journal (a journal
            # update here would be replaced by nothing a moment later)
            if syncer is not None:
                syncer.wait()
            native.sync("/")
        elif jpath is not None and time.monotonic() - journaled >= JOURNAL_INTERVAL_S:
            if syncer is None:
                native.sync("/")
                state["next_chunk"] = last_chunk + 1
                write_journal(jpath, state)
                journaled = time.monotonic()
            elif not syncer.busy:  # else: the next flush tries again
                syncer.start(last_chunk + 1)  # every chunk up to last_chunk is committed
                journaled = time.monotonic()
        payloads, chunk_ids, acc_bytes, acc_records = [], [], 0, 0

    # in flight: at most NATIVE_BATCHES_AHEAD batches of payload bytes, so the pool keeps
    # inflating while a batch is written. Memory: at most (NATIVE_BATCHES_AHEAD + 1) ×
    # batch_bytes of payloads (or a chunk larger than that), whatever the chunk sizes: bounded
    # by bytes, not by a chunk count from the average size, under which a longer run meets a
    # larger run of large chunks and the peak grew with the archive (docs/PERFORMANCE.md,
    # "Memory flat in store size")
    ahead = NATIVE_BATCHES_AHEAD * batch_bytes
    avg = max(1, int(reader.summary.get("raw_bytes") or 0) // max(1, reader.chunk_count))
    window = min(256, max(1, 2 * ahead // avg))
    try:
        for i, payload, taken in _checked_payloads(reader, selected, max(1, workers), cancel,
                                                   window, ahead, ring):
            e = reader.entry(i)
            if payloads and acc_bytes + e.payload_len > batch_bytes:
                flush()  # a batch holds at most batch_bytes (or one larger chunk)
            payloads.append(payload)
            token = taken if taken is not None else token
            chunk_ids.append(i)
            acc_bytes += e.payload_len
            acc_records += e.records
            writes.expected += e.records
            last_chunk = i
            result.chunks += 1
            if acc_bytes >= batch_bytes:
                flush()
            if progress is not None:
                progress(Progress(result.records_written + acc_records,
                                  result.bytes_written + acc_bytes, result.chunks,
                                  time.perf_counter() - t0, reader.summary.get("records"),
                                  total_bytes))
        if selected:
            last_chunk = max(last_chunk, selected[-1])
        flush(final=True)
    finally:
        if syncer is not None and syncer.busy:  # on an error: before the file is closed
            try:
                syncer.wait()
            except DatastoreError:
                log.warning("restore journal sync failed while stopping", exc_info=True)


def _finish(target: Any, jpath: Path | None, result: RestoreResult, t0: float
            ) -> RestoreResult:
    target.sync("/")
    if jpath is not None:
        jpath.unlink(missing_ok=True)
    result.duration_s = time.perf_counter() - t0
    return result
