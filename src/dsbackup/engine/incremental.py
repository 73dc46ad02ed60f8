"""Incremental backups: chunks unchanged since the parent archive are referenced, not rewritten.

Chunk boundaries are content-defined (docs/FORMAT.md §4.1), so an unchanged key range yields
the same chunk as in the parent. The backup first plans the store's chunks from keys and value
sizes only (native KeyPlanner, or the LMDB scanner's keys-only walk) and compares each plan's
first/last key, record count, payload length and key digest with the parent's index:

- a matching chunk whose keys are content hashes (`/blocks/...`, or every key of a flatfs
  blockstore: the key is the multihash of the value) is referenced without reading its values
  (``BackupConfig.trust_content_keys``, on by default);
- any other chunk is read and framed (not compressed); when its payload XXH3 equals the
  parent's it is referenced, otherwise it is compressed and stored.

The archive still describes the full state: see dsbackup.archive.chain for reading it.
Helpers for schedulers and retention: :func:`choose_parent`, :func:`parent_of`,
:func:`archive_fingerprint`, :func:`parent_map`, :func:`required_archives`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup._ext.compress import ENGINES
from dsbackup._ext.framing import Chunker, FramingError, KeyPlanner
from dsbackup._version import __version__
from dsbackup.archive.chain import ParentRef, index_digest
from dsbackup.archive.index import ChunkEntry
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.datastores.registry import scheme_and_location
from dsbackup.engine import flatfs_incremental
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.nodefiles import NodeSnapshot, node_snapshot, private_key_warning
from dsbackup.errors import BackupError, Cancelled, ConfigError, IntegrityError
from dsbackup.metadata import BackupMetadata, BackupStatistics, Progress
from dsbackup.patterns import KeyMatcher, key_matcher
from dsbackup.pipeline.chunks import compress_chunk

log = logging.getLogger(__name__)

Plan = tuple[bytes, bytes, int, int, int, int]  # first, last, records, payload len, keys, raw
SCAN_BATCH_BYTES = 8 << 20


# -- helpers for schedulers and retention ----------------------------------------------------


def archive_fingerprint(path: str | os.PathLike[str]) -> str:
    """The archive's fingerprint (summary `fingerprint`; O(1), reads no chunk)."""
    with ArchiveReader(path) as r:
        return str(r.summary["fingerprint"])


def parent_of(path: str | os.PathLike[str]) -> str | None:
    """The fingerprint of the archive's parent, or None for a full backup."""
    with ArchiveReader(path) as r:
        ref = ParentRef.from_manifest(r.manifest, str(path))
    return None if ref is None else ref.fingerprint


def choose_parent(archives: Sequence[str | os.PathLike[str]], full_every: int,
                  ) -> Path | None:
    """The parent for the next backup of a schedule, or None when it must be a full backup.

    `archives`: the schedule's existing archives (any order; unreadable ones are ignored). The
    newest (manifest `created`) is the parent unless its chain — itself, its parent, … among
    `archives` — already holds `full_every` archives, so every `full_every`-th run is full
    (`full_every` <= 1: always full).
    """
    if full_every <= 1:
        return None
    info: list[tuple[str, Path, str, str | None]] = []
    for a in archives:
        try:
            with ArchiveReader(a) as r:
                ref = ParentRef.from_manifest(r.manifest, str(a))
                info.append((str(r.manifest.get("created", "")), Path(a),
                             str(r.summary["fingerprint"]), ref.fingerprint if ref else None))
        except (OSError, IntegrityError, KeyError, ValueError) as exc:
            log.info("choose_parent: ignoring %s (%s)", a, exc)
        except Exception as exc:  # ArchiveError and the like: not a usable parent
            log.info("choose_parent: ignoring %s (%s)", a, exc)
    if not info:
        return None
    newest = max(info, key=lambda t: t[0])
    by_fp = {fp: (p, parent) for _, p, fp, parent in info}
    depth, parent = 1, newest[3]
    while parent is not None and parent in by_fp and depth < full_every:
        depth += 1
        parent = by_fp[parent][1]
    if parent is not None and parent not in by_fp:
        return None  # the newest archive's chain is incomplete here: start afresh
    return None if depth >= full_every else newest[1]


def parent_map(archives: Sequence[str | os.PathLike[str]]) -> dict[Path, Path | None]:
    """Each archive's parent among `archives` (None: a full backup, or a parent not in the
    list), resolved by content identity (dsbackup.archive.lineage): among twins of the same
    fingerprint, the very archive the child references. For retention and prune."""
    from dsbackup.archive.lineage import ArchiveInfo, parent_links

    links = parent_links([ArchiveInfo.read(a) for a in archives])
    return {p: (ps[0] if ps else None) for p, ps in links.items()}


def required_archives(keep: Sequence[str | os.PathLike[str]],
                      archives: Sequence[str | os.PathLike[str]]) -> set[Path]:
    """`keep` plus every archive of `archives` that a kept archive needs (its parent chain;
    every equally good twin when the referenced one is not there): prune may delete only
    archives outside this set."""
    from dsbackup.archive.lineage import ArchiveInfo, parent_links

    paths = [Path(a) for a in archives] + [Path(k) for k in keep if Path(k) not in
                                           {Path(a) for a in archives}]
    links = parent_links([ArchiveInfo.read(a) for a in paths])
    need: set[Path] = set()
    pending = [Path(k) for k in keep]
    while pending:
        cur = pending.pop()
        if cur not in need:
            need.add(cur)
            pending.extend(links.get(cur, []))
    return need


# -- the backup -------------------------------------------------------------------------------


@dataclass
class _Counts:
    referenced: int = 0
    read: int = 0  # chunks whose values were read to compare them
    stored: int = 0


def content_prefixes(ds: Any) -> tuple[bytes, ...]:
    """Key prefixes under which a key is the multihash of its value."""
    scheme = getattr(ds, "scheme", "") or str(getattr(ds, "uri", "")).split(":", 1)[0]
    return (b"/",) if scheme == "flatfs" else (b"/blocks/",)


class _Matcher:
    """Parent index lookup: plans and framed chunks against the parent's chunks."""

    def __init__(self, parent: ArchiveReader, usable: bool) -> None:
        self.by_first: dict[bytes, tuple[int, ChunkEntry]] = {}
        if usable:
            for i, e in enumerate(parent.index.entries()):
                self.by_first[e.first_key] = (i, e)

    def plan(self, p: Plan) -> tuple[int, ChunkEntry] | None:
        hit = self.by_first.get(p[0])
        if hit is None:
            return None
        e = hit[1]
        if (e.last_key, e.records, e.payload_len, e.keys_xxh3) != (p[1], p[2], p[3], p[4]):
            return None
        return hit

    def chunk(self, c: Any) -> tuple[int, ChunkEntry] | None:
        hit = self.by_first.get(bytes(c.first_key))
        if hit is None:
            return None
        e = hit[1]
        if (e.last_key, e.records, e.payload_len, e.keys_xxh3, e.payload_xxh3) != (
                bytes(c.last_key), c.record_count, c.payload_len, c.keys_xxh3, c.payload_xxh3):
            return None
        return hit


class _Source:
    """Keys-and-sizes plans and framed value ranges of a datastore (any backend)."""

    def __init__(self, ds: Any, chunk_size: int, chunk_max_bytes: int,
                 matcher: KeyMatcher | None, catalog: bool) -> None:
        self.ds = ds
        self.cs, self.cmb, self.matcher, self.catalog = chunk_size, chunk_max_bytes, matcher, \
            catalog
        self.planner = KeyPlanner(chunk_size, chunk_max_bytes, matcher)
        self.planned = False
        self.framed_excluded = [0, 0]

    def plans(self) -> Iterator[Plan]:
        self.planned = True
        for keys, sizes in self.ds.scan_key_sizes():
            yield from self.planner.add(keys, sizes)
        last = self.planner.finish()
        if last is not None:
            yield last

    def frame(self, start: bytes, end: bytes | None) -> Iterator[Any]:
        chunker = Chunker(self.cs, self.cmb, exclude=self.matcher, catalog=self.catalog)
        for keys, values in self.ds.scan_batches(start, end, max_bytes=SCAN_BATCH_BYTES):
            yield from chunker.add(keys, values)
        last = chunker.finish()
        self.framed_excluded[0] += chunker.excluded_records
        self.framed_excluded[1] += chunker.excluded_bytes
        if last is not None:
            yield last

    @property
    def excluded(self) -> tuple[int, int]:
        if self.planned:
            return self.planner.excluded_records, self.planner.excluded_bytes
        return self.framed_excluded[0], self.framed_excluded[1]

    def has_prefix(self, prefix: bytes) -> bool:
        k = self.ds.seek_key(prefix)
        return k is not None and k.startswith(prefix)

    snapshot_id = None

    def close(self) -> None:
        """The datastore belongs to the caller."""


class _LmdbSource:
    """LMDB through the native scanner: one read transaction (one snapshot) for planning and
    for the values read; the planning walk reads keys and node headers only."""

    def __init__(self, path: str, chunk_size: int, chunk_max_bytes: int,
                 matcher: KeyMatcher | None, catalog: bool) -> None:
        from dsbackup._ext.lmdbscan import LmdbRangeScanner
        from dsbackup.datastores.lmdb import claim

        self._claim = claim(path, "dsbackup.engine.incremental (liblmdb)")
        self._claim.__enter__()  # py-lmdb may not open it here meanwhile
        try:
            self.scanner = LmdbRangeScanner(path, chunk_size=chunk_size,
                                            chunk_max_bytes=chunk_max_bytes, level=-1,
                                            exclude=matcher, catalog=catalog)
        except BaseException:
            self._claim.__exit__(None, None, None)
            raise

    def plans(self) -> Iterator[Plan]:
        self.planned = True
        while True:
            batch = self.scanner.plan_chunks(4096)
            if not batch:
                return
            yield from batch

    def frame(self, start: bytes, end: bytes | None) -> Iterator[Any]:
        self.scanner.reset(start, end)
        while (c := self.scanner.next_chunk()) is not None:
            yield c

    planned = False

    @property
    def excluded(self) -> tuple[int, int]:
        if self.planned:
            return self.scanner.planned_excluded
        return self.scanner.excluded_records, self.scanner.excluded_bytes

    def has_prefix(self, prefix: bytes) -> bool:
        k = self.scanner.last_key_before(prefix[:-1] + bytes([prefix[-1] + 1]))
        return k is not None and k.startswith(prefix)

    @property
    def snapshot_id(self) -> int:
        return self.scanner.txn_id

    def close(self) -> None:
        try:
            self.scanner.close()
        finally:
            self._claim.__exit__(None, None, None)


class _UriSource:
    """A source given as a URI: LMDB natively, any other backend opened read-only here."""

    def __init__(self, uri: str) -> None:
        from dsbackup.datastores.registry import detect_scheme, parse_uri

        scheme, location, params = parse_uri(uri)
        if scheme is None:
            scheme = detect_scheme(location)
        self.native_lmdb = scheme == "lmdb" and not params
        self.location = location
        self.uri = f"{scheme}:{location}" if self.native_lmdb else uri
        self.scheme = scheme
        self.ds: Any = None
        if not self.native_lmdb:
            from dsbackup.datastores import open_datastore

            self.ds = open_datastore(uri, readonly=True)
            self.uri = getattr(self.ds, "uri", uri)


def _items(src: _Source, match: _Matcher, prefixes: tuple[bytes, ...],
           pool: ThreadPoolExecutor, level: int, catalog: bool, counts: _Counts,
           ) -> Iterator[tuple[str, Any]]:
    """In key order: ("ref", (parent seq, parent entry, raw bytes)) or ("chunk", Future).

    Planning (keys and sizes) only pays where a plan can be trusted without its values: a
    store without keys under a content-hash prefix is framed and compared in one pass."""

    def trust(first: bytes, last: bytes) -> bool:
        return any(first.startswith(p) and last.startswith(p) for p in prefixes)

    def value_run(start: bytes, end: bytes | None) -> Iterator[tuple[str, Any]]:
        for c in src.frame(start, end):
            counts.read += 1
            hit = match.chunk(c)
            if hit is not None:
                counts.referenced += 1
                yield "ref", (hit[0], hit[1], c.raw_bytes)
            else:
                counts.stored += 1
                yield "chunk", pool.submit(compress_chunk, c, level, catalog)

    if not any(src.has_prefix(p) for p in prefixes):
        yield from value_run(b"", None)
        return
    run_start: bytes | None = None
    first = True
    for p in src.plans():
        hit = match.plan(p)
        if hit is not None and trust(p[0], p[1]):
            if run_start is not None:
                yield from value_run(run_start, p[0])
                run_start = None
            counts.referenced += 1
            yield "ref", (hit[0], hit[1], p[5])
        elif run_start is None:
            run_start = b"" if first else p[0]
        first = False
    if run_start is not None:
        yield from value_run(run_start, None)


def _check_own(tmp: Path, parent: ArchiveReader) -> None:
    """Before the rename: the new archive's own members and every reference (index checks
    against the parent chain; the parents' members were checked when they were written)."""
    from dsbackup.archive.chain import ParentChain
    from dsbackup.archive.verify import VerifyReport, _check_summary

    with ArchiveReader(tmp) as r:
        report = VerifyReport(path=str(tmp), mode="quick")
        for problem in r.index.check_layout(r.manifest_end, r.trailer.index_offset):
            report.add(problem)
        _check_summary(r, report)
        if not report.ok:
            raise IntegrityError(f"{tmp}: the archive just written failed its check: "
                                 + "; ".join(report.errors[:3]))
        upper = parent.open_parents()
        chain = ParentChain.of_levels(r, [parent] + (upper.levels if upper else []))
        for i, e in enumerate(r.index.entries()):
            if e.in_parent:
                chain.locate(i)
            else:
                r.check_member(i)
                if r.index.catalog_count:
                    r.check_catalog_member(i)


def create_incremental(source: Any, path: Path, parent: Path, cfg: BackupConfig, *,
                       parent_dirs: list[str | os.PathLike[str]] | None = None,
                       progress: Callable[[Progress], None] | None = None,
                       cancel: threading.Event | None = None,
                       t0: float | None = None) -> BackupMetadata:
    """Back up `source` (a datastore object or URI; an LMDB URI is read with the native
    scanner) to `path` as an incremental of the archive `parent` (see module doc)."""

    t0 = time.perf_counter() if t0 is None else t0
    cancel = cancel or threading.Event()
    preader = ArchiveReader(parent, parent_dirs=parent_dirs)
    uri_source = None
    try:
        chain = preader.open_parents()  # every ancestor must be there before we rely on it
        if chain is not None and cfg.include_metadata and preader.index.catalog_count:
            chain.require_catalogs()  # referenced catalogs must exist all the way down
        target = path.resolve()
        for p in [preader.path] + (chain.paths if chain else []):
            if p.resolve() == target:
                raise ConfigError(f"{path}: is the parent archive or one of its ancestors; "
                                  "write the incremental backup to a new path")
        if isinstance(source, (str, os.PathLike)):
            uri_source = _UriSource(os.fspath(source))
            if uri_source.ds is not None:
                source = uri_source.ds
            else:
                return _create(uri_source, path, preader, cfg, progress, cancel, t0,
                               ("lmdb", uri_source.location))
        return _create(source, path, preader, cfg, progress, cancel, t0,
                       scheme_and_location(source))
    finally:
        preader.close()
        if uri_source is not None and uri_source.ds is not None:
            uri_source.ds.close()


def _create(ds: Any, path: Path, preader: ArchiveReader, cfg: BackupConfig,
            progress: Callable[[Progress], None] | None, cancel: threading.Event, t0: float,
            scheme_loc: tuple[str, str]) -> BackupMetadata:
    pm = preader.manifest
    psettings = pm.get("settings") or {}
    chunk_size, cmb = psettings.get("chunk_size"), psettings.get("chunk_max_bytes")
    if not isinstance(chunk_size, int) or not isinstance(cmb, int) or chunk_size < 1 or cmb < 1:
        raise ConfigError(f"{preader.path}: parent has no usable chunk settings")
    if cfg.chunk_size is not None and cfg.chunk_size != chunk_size:
        log.warning("incremental backup: using the parent's chunk_size %d (not %d)",
                    chunk_size, cfg.chunk_size)
    catalog = cfg.include_metadata
    usable = not catalog or preader.index.catalog_count > 0 or not preader.chunk_count
    if not usable:
        log.warning("%s: the parent has no key catalog, so no chunk can be referenced",
                    preader.path)
    pfp = str(preader.summary["fingerprint"])
    ref = ParentRef(pfp, preader.path.name, index_digest(preader),
                    os.path.relpath(preader.path.resolve(), path.resolve().parent))
    scheme, _ = scheme_loc
    created = datetime.now(timezone.utc)
    manifest = {
        "format": "dsbackup", "version": 1, "tool": f"dsbackup {__version__}",
        "created": created.isoformat(),
        "source": {"uri": getattr(ds, "uri", type(ds).__name__),
                   "backend": scheme or type(ds).__name__},
        "settings": {
            "compression_level": cfg.compression_level,
            "engine": ENGINES[cfg.compression_level],
            "chunk_size": chunk_size, "chunk_max_bytes": cmb,
            "exclude_patterns": list(cfg.exclude_patterns),
            "include_metadata": catalog,
            "trust_content_keys": cfg.trust_content_keys,
        },
        "parent": ref.to_manifest(),
    }
    # the node's files are stored whole in every archive of a chain (docs/FORMAT.md §11.2)
    node = None if cfg.datastore_only else node_snapshot(ds)
    if node is not None:
        manifest["node"] = node.manifest
    matcher = key_matcher(cfg.exclude_patterns, "exclude_patterns")
    src: Any
    if flatfs_incremental.applies(ds, cfg):  # listing speed (engine/flatfs_incremental.py)
        src = flatfs_incremental.FlatfsIncremental(ds, preader, cfg, chunk_size, cmb, usable)
    elif isinstance(ds, _UriSource):
        src = _LmdbSource(scheme_loc[1], chunk_size, cmb, matcher, catalog)
    else:
        src = _Source(ds, chunk_size, cmb, matcher, catalog)
    try:
        return _write(ds, path, preader, cfg, progress, cancel, t0, src, manifest, created,
                      chunk_size, cmb, catalog, pfp, usable, node)
    finally:
        src.close()


def _write(ds: Any, path: Path, preader: ArchiveReader, cfg: BackupConfig,
           progress: Callable[[Progress], None] | None, cancel: threading.Event, t0: float,
           src: Any, manifest: dict[str, Any], created: datetime, chunk_size: int, cmb: int,
           catalog: bool, pfp: str, usable: bool,
           node: NodeSnapshot | None = None) -> BackupMetadata:
    prefixes = content_prefixes(ds) if cfg.trust_content_keys else ()

    counts = _Counts()
    threads = cfg.effective_workers
    limit = 2 * threads + 2
    if preader.encrypted and cfg.encryption is None:
        raise ConfigError(f"{preader.path}: the parent is encrypted; an incremental of it "
                          "must be encrypted too (give --encrypt)")
    kdf = None  # one scrypt derivation unlocks the chain (docs/FORMAT.md §11.4)
    if cfg.encryption is not None and preader.key_header is not None:
        pkdf = preader.key_header.get("kdf") or {}
        if pkdf.get("name") == "scrypt" == cfg.encryption.kind:
            kdf = pkdf
    with ArchiveWriter(path, manifest=manifest, level=cfg.compression_level,
                       created=created.timestamp(), parent_fingerprint=pfp,
                       overwrite=cfg.overwrite,
                       node=None if node is None else node.data,
                       key=cfg.encryption, kdf=kdf) as writer, \
            ThreadPoolExecutor(max_workers=threads,
                               thread_name_prefix="dsbackup-compress") as pool:
        window: deque[tuple[str, Any]] = deque()
        futures = 0

        done = [0, 0]  # records, raw bytes

        def write(item: tuple[str, Any]) -> None:
            kind, val = item
            if kind == "ref":
                seq, entry, raw = val
                writer.add_reference(seq, entry, raw, catalog=catalog)
                done[0] += entry.records
                done[1] += raw
            else:
                c = val.result()
                writer.add_chunk(c, c.catalog_body, c.catalog_xxh3)
                done[0] += c.record_count
                done[1] += c.raw_bytes
            if progress is not None:
                progress(Progress(done[0], done[1], writer.chunk_count,
                                  time.perf_counter() - t0))

        try:
            match = _Matcher(preader, usable)
            items = (src.items(match, pool, cfg.compression_level, catalog, counts)
                     if isinstance(src, flatfs_incremental.FlatfsIncremental) else
                     _items(src, match, prefixes, pool, cfg.compression_level, catalog, counts))
            for item in items:
                if cancel.is_set():
                    raise Cancelled("backup cancelled")
                window.append(item)
                futures += item[0] == "chunk"
                while window and (futures > limit or window[0][0] == "ref"
                                  or window[0][1].done()):
                    head = window.popleft()
                    futures -= head[0] == "chunk"
                    write(head)
            while window:
                write(window.popleft())
        except FramingError as exc:
            raise BackupError(f"{getattr(ds, 'uri', ds)}: {exc}") from exc
        finally:
            for kind, val in window:
                if kind == "chunk":
                    val.cancel()
        if cancel.is_set():
            raise Cancelled("backup cancelled")
        excluded_records, excluded_bytes = src.excluded
        duration = time.perf_counter() - t0
        summary = {
            "duration_s": round(duration, 6), "excluded_records": excluded_records,
            "excluded_bytes": excluded_bytes, "mode": "incremental", "workers": threads,
            "snapshot": src.snapshot_id, "stored_chunks": counts.stored,
            "chunks_read_to_compare": counts.read,
        }
        check = (lambda tmp: _check_own(tmp, preader)) if cfg.verify_integrity else None
        written = writer.finish(summary, before_rename=check)
    stats = BackupStatistics(
        duration_s=time.perf_counter() - t0, keys_processed=written.records,
        bytes_processed=written.raw_bytes, bytes_compressed=written.size, errors=0,
        skipped_keys=excluded_records, skipped_bytes=excluded_bytes, workers=threads,
        mode="incremental")
    unread = getattr(getattr(src, "ds", None), "skipped", None)  # vanished mid-scan
    if unread is not None:
        stats.unreadable_files, stats.skipped_files = unread.count, list(unread.examples)
    foreign = getattr(src, "audit", None)  # the flatfs path audits the files itself
    if foreign is not None:
        stats.foreign_files = foreign.count
        stats.skipped_files = [*foreign.examples, *stats.skipped_files][:10]
    return BackupMetadata(
        path=str(path), version=writer.version, timestamp=created, total_keys=written.records,
        total_size=written.raw_bytes, compressed_size=written.size, chunks=written.chunks,
        fingerprint=written.fingerprint,
        compression={"level": cfg.compression_level, "engine": ENGINES[cfg.compression_level]},
        config={**cfg.to_dict(), "chunk_size": chunk_size, "chunk_max_bytes": cmb},
        datastore=manifest["source"], statistics=stats, parent=pfp, tool=manifest["tool"],
        node=manifest.get("node"),
        node_warning=None if cfg.encryption is not None else  # sealed: not readable
        private_key_warning(manifest.get("node"), node and node.files))
