"""Incremental backups: the store-or-reference policy. Chunks unchanged since the parent
archive are referenced, not rewritten; the write loop is dsbackup.engine.write's.

Chunk boundaries are content-defined (docs/FORMAT.md §4.1), so an unchanged key range yields
the same chunk as in the parent. The backup first plans the store's chunks from keys and value
sizes only (native KeyPlanner, or the LMDB scanner's keys-only walk: dsbackup.pipeline.sources)
and compares each plan's first/last key, record count, payload length and key digest with the
parent's index:

- a matching chunk whose keys are content hashes (`/blocks/...`, or every key of a flatfs
  blockstore: the key is the multihash of the value) is referenced without reading its values
  (``BackupConfig.trust_content_keys``, on by default);
- any other chunk is read and framed (not compressed); when its payload XXH3 equals the
  parent's it is referenced, otherwise it is compressed and stored.

The archive still describes the full state: see dsbackup.archive.chain for reading it. Which
archive is whose parent (for schedulers and prune): dsbackup.archive.lineage.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup.archive.chain import ParentRef, index_digest
from dsbackup.archive.index import ChunkEntry
from dsbackup.archive.pages import page_entries_after
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.refcheck import resolved_references, suspect_references
from dsbackup.engine import flatfs_incremental
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.manifest import ScanOutcome
from dsbackup.engine.nodefiles import node_snapshot
from dsbackup.engine.parentraw import raw_bytes_of
from dsbackup.engine.plan import BackupPlan, ProgressCallback
from dsbackup.engine.write import Reference, store_or_reference, write_archive
from dsbackup.errors import ConfigError, DatastoreError, IntegrityError, MissingParentError
from dsbackup.metadata import BackupMetadata
from dsbackup.pipeline.central import ChunkSettings
from dsbackup.pipeline.sources import DatastoreSource, LmdbSource, Plan
from dsbackup.storage import as_location, display, exists, identity, relative_hint
from dsbackup.storage.holds import hold_chain

log = logging.getLogger(__name__)


@dataclass
class _Counts:
    referenced: int = 0
    read: int = 0  # chunks whose values were read to compare them
    stored: int = 0


def content_prefixes(ds: Any) -> tuple[bytes, ...]:
    """Key prefixes under which a key is the multihash of its value."""
    return (b"/",) if getattr(ds, "scheme", "") == "flatfs" else (b"/blocks/",)


class _Matcher:
    """Parent index lookup: plans and framed chunks against the parent's chunks."""

    def __init__(self, parent: ArchiveReader, usable: bool) -> None:
        self.by_first: dict[bytes, tuple[int, ChunkEntry]] = {}
        self._paged = parent.index if usable and parent.index.paged else None
        if usable and self._paged is None:  # a single index is loaded whole anyway
            for i, e in enumerate(parent.index.entries()):
                self.by_first[e.first_key] = (i, e)

    def _lookup(self, first_key: bytes) -> tuple[int, ChunkEntry] | None:
        """The parent's chunk starting at `first_key`. A paged parent (docs/FORMAT.md §11.3) is
        searched in place (root, then one page; pages cached), so memory does not grow with
        the parent's size."""
        if self._paged is None:
            return self.by_first.get(first_key)
        i = self._paged.chunks_overlapping(first_key, None).start
        if i >= len(self._paged):
            return None
        e = self._paged.entry(i)
        return (i, e) if e.first_key == first_key else None

    def plan(self, p: Plan) -> tuple[int, ChunkEntry] | None:
        hit = self._lookup(p[0])
        if hit is None:
            return None
        e = hit[1]
        if (e.last_key, e.records, e.payload_len, e.keys_xxh3) != (p[1], p[2], p[3], p[4]):
            return None
        return hit

    def chunk(self, c: Any) -> tuple[int, ChunkEntry] | None:
        hit = self._lookup(bytes(c.first_key))
        if hit is None:
            return None
        e = hit[1]
        if (e.last_key, e.records, e.payload_len, e.keys_xxh3, e.payload_xxh3) != (
                bytes(c.last_key), c.record_count, c.payload_len, c.keys_xxh3, c.payload_xxh3):
            return None
        return hit


class IncrementalStream:
    """The store's chunks in key order, each a Reference to the parent's chunk or a running
    compression (see dsbackup.engine.write). `src`: a pipeline source (closed on exit)."""

    def __init__(self, src: Any, match: _Matcher, prefixes: tuple[bytes, ...], level: int,
                 catalog: bool, threads: int, resumption: Any = None,
                 parent: ArchiveReader | None = None) -> None:
        """`resumption`: a killed backup's temp file this one continues
        (dsbackup.engine.resume.Resumption): the store is backed up from the key after its
        kept chunks on, and the raw bytes of the parent chunks they refer to are counted at
        the end (from `parent`, less the chunks this run refers to)."""
        self.src, self.match, self.prefixes = src, match, prefixes
        self.level, self.catalog, self.threads = level, catalog, threads
        self.max_pending = 2 * threads + 2
        self.counts = _Counts()
        self.resumption = resumption
        self.start = b"" if resumption is None else resumption.start_key
        self.parent = parent
        self._above: bytearray | None = None  # the parent chunks this run refers to (marks)
        self._above_raw = 0
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> IncrementalStream:
        self._pool = ThreadPoolExecutor(max_workers=self.threads,
                                        thread_name_prefix="dsbackup-compress")
        if self.resumption is not None:  # this run's epoch, on the temp file
            self.resumption.record(getattr(self.src, "snapshot_id", None))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        finally:
            self.src.close()

    def items(self) -> Iterator[Any]:
        r = self.resumption
        if r is None or r.below is None or isinstance(self.src,
                                                      flatfs_incremental.FlatfsIncremental):
            return self._items()  # (flatfs: the clean chunks' share carries `below`)
        return self._counted(self._items(), len(r.below))

    def _counted(self, items: Iterator[Any], n: int) -> Iterator[Any]:
        """`items`, noting the parent chunks referred to and their raw bytes."""
        self._above = above = bytearray(n)
        for item in items:
            if isinstance(item, Reference):
                above[item.seq] = 1
                self._above_raw += item.raw_bytes
            yield item

    def _items(self) -> Iterator[Any]:
        """Planning (keys and sizes) only pays where a plan can be trusted without its values:
        a store without keys under a content-hash prefix is framed and compared in one pass."""
        src, match, prefixes, counts = self.src, self.match, self.prefixes, self.counts
        if isinstance(src, flatfs_incremental.FlatfsIncremental):  # from its own `start`
            yield from src.items(match, self._pool, self.level, self.catalog, counts)
            return
        start = self.start

        def trust(first: bytes, last: bytes) -> bool:
            return any(first.startswith(p) and last.startswith(p) for p in prefixes)

        def value_run(start: bytes, end: bytes | None) -> Iterator[Any]:
            return store_or_reference(src.frame(start, end), match, self._pool, self.level,
                                      self.catalog, counts)

        if not any(src.has_prefix(p) for p in prefixes):
            yield from value_run(start, None)
            return
        run_start: bytes | None = None
        first = True
        for p in src.plans(start):
            hit = match.plan(p)
            if hit is not None and trust(p[0], p[1]):
                if run_start is not None:
                    yield from value_run(run_start, p[0])
                    run_start = None
                counts.referenced += 1
                yield Reference(hit[0], hit[1], p[5])
            elif run_start is None:
                run_start = start if first else p[0]
            first = False
        if run_start is not None:
            yield from value_run(run_start, None)

    def outcome(self) -> ScanOutcome:
        excluded_records, excluded_bytes = self.src.excluded
        unread = getattr(getattr(self.src, "ds", None), "skipped", None)  # vanished mid-scan
        extra: dict[str, Any] = {"stored_chunks": self.counts.stored,
                                 "chunks_read_to_compare": self.counts.read}
        r = self.resumption
        if r is not None:  # the whole archive's stored chunks; this run's reads
            extra["stored_chunks"] += r.state.next_seq - r.state.referenced
            extra["resumed"] = [*r.state.epochs, r.epoch]
            if self._above is not None and self.parent is not None:
                r.late_raw_bytes = raw_bytes_of(self.parent, r.below, known=self._above,
                                                known_raw=self._above_raw,
                                                threads=self.threads)
            elif isinstance(self.src, flatfs_incremental.FlatfsIncremental):
                r.late_raw_bytes = self.src.unsent_raw  # `below`'s, when no References took it
        return ScanOutcome(
            mode="incremental", workers=self.threads, excluded_records=excluded_records,
            excluded_bytes=excluded_bytes, snapshot=getattr(self.src, "snapshot_id", None),
            extra=extra,
            unreadable_files=unread.count if unread is not None else 0,
            unreadable_examples=list(unread.examples) if unread is not None else [],
            foreign=getattr(self.src, "audit", None))  # the flatfs path audits its listing


def _check_own(tmp: Path, parent: ArchiveReader, *, members: bool = True) -> None:
    """Before the rename: the new archive's own members, every reference (index checks
    against the parent chain) and the members the references resolve to in the parents (a
    parent damaged since it was written would make this archive unrestorable: exit 3, see
    _check_referenced; `members` False, trust_parent: those bytes are not read)."""
    from dsbackup.archive.chain import ParentChain
    from dsbackup.archive.verify import VerifyReport, _check_summary

    with ArchiveReader(tmp) as r:  # a temp file, or the bytes an upload sent (a Source)
        report = VerifyReport(path=display(tmp), mode="quick")
        for problem in r.index.check_layout(r.manifest_end, r.trailer.index_offset):
            report.add(problem)
        _check_summary(r, report)
        if not report.ok:
            raise IntegrityError(f"{display(tmp)}: the archive just written failed its check: "
                                 + "; ".join(report.errors[:3]))
        upper = parent.open_parents()
        levels = [parent] + (upper.levels if upper else [])
        chain = ParentChain.of_levels(r, levels)
        # references checked in bulk; locate judges the few that do not pass (its error)
        stored, suspects = suspect_references(r, levels)
        bad = set(suspects.tolist())
        for i in sorted(bad.union(stored.tolist())) if bad else stored.tolist():
            if i in bad:
                chain.locate(i)
            else:
                r.check_member(i)
                if r.index.catalog_count:
                    r.check_catalog_member(i)
        if members:
            _check_referenced(r, levels, tmp)


def _check_before_commit(tmp: Path, parent: ArchiveReader, cfg: BackupConfig) -> None:
    """The check before the rename: _check_own (unless verify_integrity is off), then that
    the parent chain is still at its locations (_parents_still_there)."""
    if cfg.verify_integrity:
        _check_own(tmp, parent, members=not cfg.trust_parent)
    _parents_still_there(tmp, parent)


def _parents_still_there(tmp: Path, parent: ArchiveReader, *, local_only: bool = False
                         ) -> None:
    """MissingParentError when an archive of the parent chain is no longer at its location
    as the archive this backup read from its open file: deleted (a prune the backup's holds
    did not reach), or replaced by another archive at the same name (`backup --overwrite`,
    `consolidate --overwrite`, a rename) whose chunks are not the ones referenced. The new
    archive would lack its parent; nothing is stored. Identity, not existence: a file's inode
    and size, an object's ETag and size (one stat, or one HEAD on S3, per archive;
    `local_only`: files only)."""
    upper = parent.open_parents()
    for lv in [parent] + (upper.levels if upper else []):
        if local_only and not isinstance(as_location(lv.path), Path):
            continue
        same = lv.still_at_its_path()
        if same is None:  # no location to look at again
            loc = as_location(lv.path)
            same = os.path.exists(loc) if isinstance(loc, Path) else exists(loc)
        if same:
            continue
        loc = as_location(lv.path)  # a local symlink is followed: a dangling one is gone
        gone = not (os.path.exists(loc) if isinstance(loc, Path) else exists(loc))
        what = ("was deleted while this backup ran (by a prune?)" if gone else
                "was replaced by another archive while this backup ran (--overwrite, or a "
                "rename), so the chunks this backup refers to are no longer there")
        raise MissingParentError(f"{display(tmp)}: the parent archive {display(lv.path)} "
                                 f"{what}; nothing was stored: run the backup again")


def _check_referenced(r: ArchiveReader, levels: list[ArchiveReader], tmp: Path) -> None:
    """The parent members (and catalogs) that `r`'s references resolve to (their entries
    checked by _check_own first), hashed against the index of the archive that stores each
    (natively, in its file order, the entries taken in bulk; an S3 parent fetches just those
    ranges). The archive is only as restorable as these bytes: a damaged one fails the backup
    (IntegrityError, exit 3) naming the parent and its chunk. Cost: one read of the
    referenced members' bytes (docs/INCREMENTAL.md "The check before the rename")."""
    import numpy as np

    catalog = r.index.catalog_count > 0
    for k, seqs, refs in resolved_references(r, levels):
        holder = levels[k]
        try:
            holder.check_stored_members(seqs, catalog=catalog)
        except IntegrityError as exc:
            bad = exc.chunk if exc.chunk is not None else int(seqs[0])
            i = int(refs[int(np.searchsorted(seqs, bad))]) if bad in seqs else None
            raise IntegrityError(
                f"{display(tmp)}: chunk {i} refers to chunk {bad} of parent "
                f"{display(holder.path)}, which is damaged ({exc}); this backup could not "
                "be restored, so it is not kept: verify and repair or replace that "
                "parent, or make a full backup (no --parent)", chunk=i) from None


@dataclass(frozen=True)
class _Where:
    """The source as the incremental reads it: an opened datastore (`ds`), or an LMDB
    environment read natively in this process (`lmdb_path`)."""

    uri: str
    scheme: str
    ds: Any = None
    lmdb_path: str | None = None


def create_incremental(source: Any, path: Path, parent: Path, cfg: BackupConfig, *,
                       parent_dirs: list[str | os.PathLike[str]] | None = None,
                       progress: ProgressCallback | None = None,
                       cancel: threading.Event | None = None,
                       t0: float | None = None) -> BackupMetadata:
    """Back up `source` (a datastore object or URI; an LMDB URI is read with the native
    scanner) to `path` as an incremental of the archive `parent` (see module doc)."""
    t0 = time.perf_counter() if t0 is None else t0
    cancel = cancel or threading.Event()
    preader = ArchiveReader(parent, parent_dirs=parent_dirs)
    owned = None
    holds = None
    try:
        chain = preader.open_parents()  # every ancestor must be there before we rely on it
        # held against a prune of their directories while this backup runs (storage/holds.py)
        holds = hold_chain([as_location(p) for p in
                            [preader.path] + (chain.paths if chain else [])],
                           as_location(path))
        # a prune between the opening and the holds may have deleted one: say so now, not
        # after the whole backup (local archives: the ones holds protect; one stat each)
        _parents_still_there(path, preader, local_only=True)
        if chain is not None and cfg.include_metadata and preader.index.catalog_count:
            chain.require_catalogs()  # referenced catalogs must exist all the way down
        target = identity(path)
        for p in [preader.path] + (chain.paths if chain else []):
            if identity(p) == target:
                raise ConfigError(f"{path}: is the parent archive or one of its ancestors; "
                                  "write the incremental backup to a new path")
        if isinstance(source, (str, os.PathLike)):
            where = _open_uri(os.fspath(source))
            owned = where.ds
        else:
            where = _Where(getattr(source, "uri", type(source).__name__),
                           getattr(source, "scheme", "") or "", ds=source)
        plan = _plan(where, path, preader, cfg, progress, cancel, t0)
        if cfg.resume:
            from dsbackup.engine.resume import plan_resumed_incremental

            resumed = plan_resumed_incremental(plan, preader)
            if resumed is None:
                log.warning("%s: no temporary file of an interrupted backup to resume; "
                            "starting a new backup", path)
            elif isinstance(resumed, BackupMetadata):
                return resumed  # a whole archive, checked and put in place
            else:
                plan = resumed
        try:
            stream = _stream(where, plan, preader, cfg)
        except BaseException:
            if plan.resume is not None:
                plan.resume.sink.release()  # nothing written yet: the file stays resumable
            raise
        try:
            return write_archive(plan, stream)
        finally:
            if isinstance(stream.src, flatfs_incremental.FlatfsIncremental):
                stream.src.close()  # its spill files, also when the writer never started
    finally:
        preader.close()
        if owned is not None:
            owned.close()
        if holds is not None:
            holds.release()


def _open_uri(uri: str) -> _Where:
    """A source given as a URI: LMDB natively, any other backend opened read-only here."""
    from dsbackup.datastores.registry import detect_scheme, open_datastore, parse_uri

    scheme, location, params = parse_uri(uri)
    if scheme is None:
        scheme = detect_scheme(location)
    if scheme == "lmdb" and not params:
        if not Path(location, "data.mdb").is_file():  # as LmdbDatastore says it, not errno 2
            raise DatastoreError(f"{Path(location).absolute()}: no LMDB environment (data.mdb "
                                 "missing)")
        # the absolute path, as an opened store records it (LmdbDatastore.uri): a relative
        # one named another store from another working directory (inspect, --resume)
        return _Where(f"lmdb:{Path(location).absolute()}", "lmdb", lmdb_path=location)
    ds = open_datastore(uri, readonly=True)
    return _Where(getattr(ds, "uri", uri), ds.scheme, ds=ds)


def _plan(where: _Where, path: Path, preader: ArchiveReader, cfg: BackupConfig,
          progress: ProgressCallback | None, cancel: threading.Event, t0: float,
          ) -> BackupPlan:
    """The plan: the parent's chunk settings, its reference."""
    psettings = preader.manifest.get("settings") or {}
    chunk_size, cmb = psettings.get("chunk_size"), psettings.get("chunk_max_bytes")
    if not isinstance(chunk_size, int) or not isinstance(cmb, int) or chunk_size < 1 or cmb < 1:
        raise ConfigError(f"{preader.path}: parent has no usable chunk settings")
    if cfg.chunk_size is not None and cfg.chunk_size != chunk_size:
        log.warning("incremental backup: using the parent's chunk_size %d (not %d)",
                    chunk_size, cfg.chunk_size)
    if not _usable(preader, cfg):
        log.warning("%s: the parent has no key catalog, so no chunk can be referenced",
                    preader.path)
    ref = ParentRef(preader.fingerprint, preader.path.name,
                    index_digest(preader),
                    relative_hint(preader.path, path))
    created = datetime.now(timezone.utc)
    node = None if cfg.datastore_only else node_snapshot(where.ds)
    if preader.encrypted and cfg.encryption is None:
        raise ConfigError(f"{preader.path}: the parent is encrypted; an incremental of it "
                          "must be encrypted too (give --encrypt)")
    kdf = None  # one scrypt derivation unlocks the chain (docs/FORMAT.md §11.4)
    if cfg.encryption is not None and preader.key_header is not None:
        pkdf = preader.key_header.get("kdf") or {}
        if pkdf.get("name") == "scrypt" == cfg.encryption.kind:
            kdf = pkdf
    plan = BackupPlan(
        path=path, cfg=cfg, created=created,
        source={"uri": where.uri, "backend": where.scheme or type(where.ds).__name__},
        chunk_size=chunk_size, chunk_max_bytes=cmb, node=node, cancel=cancel, t0=t0,
        progress=progress, parent=ref, kdf=kdf,
        page_entries=page_entries_after(cfg.paged_index, preader.index),
        check=lambda tmp: _check_before_commit(tmp, preader, cfg))
    return plan


def _usable(preader: ArchiveReader, cfg: BackupConfig) -> bool:
    """Whether the parent's chunks can be referenced (an archive with a key catalog refers
    only to chunks of parents with one)."""
    return not cfg.include_metadata or preader.index.catalog_count > 0 or not preader.chunk_count


def _stream(where: _Where, plan: BackupPlan, preader: ArchiveReader, cfg: BackupConfig
            ) -> IncrementalStream:
    """The chunk stream of `plan` (from the key after a resumed file's kept chunks on)."""
    chunk_size, cmb, catalog = plan.chunk_size, plan.chunk_max_bytes, cfg.include_metadata
    usable = _usable(preader, cfg)
    resumption = plan.resume
    start = b"" if resumption is None else resumption.start_key
    match = _Matcher(preader, usable)
    prefixes = content_prefixes(where) if cfg.trust_content_keys else ()
    settings = ChunkSettings(chunk_size, cmb, -1, tuple(cfg.exclude_patterns), catalog)
    src: Any
    if flatfs_incremental.applies(where.ds, cfg):  # listing speed (engine/flatfs_incremental.py)
        src = flatfs_incremental.FlatfsIncremental(
            where.ds, preader, cfg, chunk_size, cmb, usable, start,
            None if resumption is None else resumption.below, plan.cancel.is_set)
    elif where.lmdb_path is not None:
        src = LmdbSource(where.lmdb_path, settings,
                         claim_for="dsbackup.engine.incremental (liblmdb)")
    else:
        src = DatastoreSource(where.ds, settings)
    return IncrementalStream(src, match, prefixes, cfg.chunk_level, catalog,
                             cfg.effective_workers, resumption, preader)
