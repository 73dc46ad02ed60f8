"""Which archives depend on which, among the archives of a directory (or any list of files).

Each incremental archive names its parent by fingerprint, index digest and file name. Full
backups of the same data share a fingerprint ("twins"), so a parent is resolved by content
identity with the same ranking the readers use (:func:`dsbackup.archive.chain.parent_rank`):
the very archive the child references, else the best-ranked twins (all of them when several
rank equally) — never "the newest". Used by prune, the scheduler's retention, and the check
that refuses to overwrite an archive others depend on.

The helpers for schedulers and retention live here too: :func:`archive_fingerprint`,
:func:`parent_of`, :func:`choose_parent` (every n-th backup full), :func:`parent_map` and
:func:`required_archives` (what prune must keep), and :func:`chain_depth`, the walk down a
chain by fingerprints that the scheduler's own choice uses as well.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup.archive.chain import ParentRef, index_digest, parent_rank
from dsbackup.errors import (
    ArchiveError,
    DsBackupError,
    IntegrityError,
    KeyRequiredError,
    UnsupportedArchive,
    WrongKeyError,
)
from dsbackup.storage import LiveWrite, as_location, identity, live_writes
from dsbackup.storage import list_archives as _list_archives

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveInfo:
    """What lineage needs of one archive (read in O(1): trailer, index, manifest, summary)."""

    path: Path  # or an S3Location (dsbackup.storage)
    fingerprint: str
    index_xxh3: str
    parent: ParentRef | None
    catalog: bool

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ArchiveInfo:
        from dsbackup.archive.reader import ArchiveReader

        with ArchiveReader(path) as r:
            return cls(as_location(path), str(r.summary.get("fingerprint", "")), index_digest(r),
                       ParentRef.from_manifest(r.manifest, str(path)),
                       r.index.catalog_count > 0)


def read_infos(paths: Iterable[str | os.PathLike[str]],
               ) -> tuple[list[ArchiveInfo], list[tuple[Path, str]]]:
    """(infos of the readable archives, [(path, error)] for the others)."""
    infos, bad = [], []
    for p in paths:
        try:
            infos.append(ArchiveInfo.read(p))
        except (ArchiveError, IntegrityError, OSError, ValueError, TypeError) as exc:
            bad.append((as_location(p), str(exc)))
    return infos, bad


def read_lineage(paths: Iterable[str | os.PathLike[str]],
                 ) -> tuple[list[ArchiveInfo], list[Path]]:
    """(infos of the readable archives, the archives whose parent cannot be known here: an
    encrypted archive without its key, one of a format this build does not read). Files that
    are no archive, or damaged ones, are in neither (a damaged child cannot be restored)."""
    infos, opaque = [], []
    for p in paths:
        try:
            infos.append(ArchiveInfo.read(p))
        except (KeyRequiredError, WrongKeyError, UnsupportedArchive):
            opaque.append(as_location(p))
        except (ArchiveError, IntegrityError, OSError, ValueError, TypeError):
            pass
    return infos, opaque


_HEAD_READ = 4 << 20  # a manifest member is a few KiB; a longer head is not read


def _temp_parent(path: Path) -> ParentRef | None:
    """The parent named by the manifest a running backup has written first to its temp file
    (docs/FORMAT.md §1: member 0; None for a full backup). ValueError when it cannot be read
    yet (no whole manifest written) or at all (encrypted: the key header comes first and the
    manifest is sealed)."""
    from dsbackup.archive import format as fmt
    from dsbackup.archive.member import decode_member, member_end

    # not blocking on a FIFO, nor following a symlink, put at the name since it was found live
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path.name}: not a regular file")
        head = f.read(_HEAD_READ)
    try:
        sub = fmt.parse_member_head(head, f"{path}: manifest")
        if sub.member_type != fmt.TYPE_MANIFEST:
            raise ValueError(f"{path.name}: the first member is of type {sub.member_type}")
        if sub.data_len > fmt.MAX_JSON_BYTES:  # not inflated (a bomb in someone's file)
            raise ValueError(f"{path.name}: a manifest of {sub.data_len} bytes")
        _, end = member_end(memoryview(head), 0)
        _, data = decode_member(head[:end], f"{path}: manifest",
                                expected_type=fmt.TYPE_MANIFEST,
                                expected_name=fmt.MANIFEST_NAME)
        manifest = json.loads(bytes(data))
    except IntegrityError as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError(f"{path.name}: the manifest is nested too deeply") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path.name}: the manifest is not a JSON object")
    return ParentRef.from_manifest(manifest, str(path))


def in_progress(directories: Iterable[Path],
                ) -> tuple[list[tuple[LiveWrite, ArchiveInfo]], list[LiveWrite],
                           list[tuple[Path, str]]]:
    """The archives being written in `directories` (:func:`dsbackup.storage.live_writes`):
    ([(write, info)] of those whose parent is known — info has the parent, no fingerprint, so
    it is nobody's parent —, [writes whose parent cannot be known]: an S3 upload, an encrypted
    temp file, one whose manifest is not whole yet, [(directory, error)] of the directories
    (prefixes) whose listing failed: any archive there may be the parent of a backup being
    written that cannot be seen (e.g. no s3:ListBucketMultipartUploads permission))."""
    known: list[tuple[LiveWrite, ArchiveInfo]] = []
    unknown: list[LiveWrite] = []
    blind: list[tuple[Path, str]] = []
    for d in directories:
        try:
            writes = live_writes(d)
        except DsBackupError as exc:  # (the caller says what it does about it)
            blind.append((d, str(exc)))
            continue
        for w in writes:
            if not isinstance(w.location, Path):
                unknown.append(w)
                continue
            try:
                ref = _temp_parent(w.location)
            except (OSError, ValueError, TypeError, ArchiveError) as exc:
                log.info("%s: parent not readable (%s): every older archive is kept",
                         w.location, exc)
                unknown.append(w)
                continue
            known.append((w, ArchiveInfo(w.location, "", "", ref, False)))
    return known, unknown, blind


@dataclass(frozen=True)
class Leftover:
    """A killed backup's temp file that `backup --resume` can continue (docs/CLI.md `prune`):
    `path`, the temp file; `final`, the archive's name (its stem when that was too long for
    a temp name: storage.tempfiles.name_stem); `written`, when it was last written
    (its parent was created before)."""

    path: Path
    final: str
    written: datetime


def resumable_leftovers(directories: Iterable[Path],
                        ) -> tuple[list[tuple[Leftover, ArchiveInfo]], list[Leftover]]:
    """The dead writers' temp files in `directories` that an incremental `backup --resume`
    can continue: ([(leftover, info)] of those whose manifest names a parent, [encrypted ones
    whose sealing state says they are resumable]: their parent cannot be read). A full
    backup's leftover, and one that cannot be resumed (no whole manifest; an encrypted one
    killed while writing its index, or without a sealing state), are in neither."""
    from dsbackup.archive.resume import is_encrypted
    from dsbackup.storage import resumestate
    from dsbackup.storage.tempfiles import stale_temp_files, temp_stem

    known: list[tuple[Leftover, ArchiveInfo]] = []
    sealed: list[Leftover] = []
    for d in directories:
        if not isinstance(d, Path):
            continue  # S3: a backup there cannot be resumed
        for tmp in stale_temp_files(d):
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                left = Leftover(tmp, temp_stem(tmp.name),
                                datetime.fromtimestamp(st.st_mtime, timezone.utc))
                if is_encrypted(fd):
                    if resumestate.sealing(fd) == resumestate.WRITING:
                        sealed.append(left)
                    continue
            except OSError:
                continue
            finally:
                os.close(fd)
            try:
                ref = _temp_parent(tmp)
            except (OSError, ValueError, TypeError, ArchiveError):
                continue  # no whole manifest: nothing to resume
            if ref is not None:
                known.append((left, ArchiveInfo(tmp, "", "", ref, False)))
    return known, sealed


def directory_archives(directory: Path) -> list[Path]:
    """Candidate archive files of a directory (or objects under an S3 prefix): regular, not
    hidden (temp files are)."""
    return _list_archives(directory)


def resolve_parent(child: ArchiveInfo, pool: Iterable[ArchiveInfo]) -> list[Path]:
    """The archives of `pool` that serve as `child`'s parent: the best-ranked ones (several
    only when they rank equally, e.g. byte-identical twins under other names); [] for a full
    backup or a parent not in the pool."""
    ref = child.parent
    if ref is None:
        return []
    ranked: list[tuple[int, Path]] = []
    for a in pool:
        if a.path == child.path:
            continue
        rank = parent_rank(ref, child.catalog, a.path.name, a.fingerprint, a.index_xxh3,
                           a.catalog)
        if rank is not None:
            ranked.append((rank, a.path))
    if not ranked:
        return []
    best = min(r for r, _ in ranked)
    return sorted(p for r, p in ranked if r == best)


def parent_links(infos: list[ArchiveInfo]) -> dict[Path, list[Path]]:
    """Each archive's parent(s) among `infos` (see :func:`resolve_parent`)."""
    return {a.path: resolve_parent(a, infos) for a in infos}


def dependents(target: Path, infos: list[ArchiveInfo]) -> list[Path]:
    """The archives of `infos` whose parent resolves to `target`."""
    tkey = identity(target)
    return sorted((a.path for a in infos
                   if any(identity(p) == tkey for p in resolve_parent(a, infos))), key=str)


# -- helpers for schedulers and retention ----------------------------------------------------


def archive_encrypted(path: Any) -> bool:
    """Whether the archive at `path` (a path or ``s3://``) is encrypted, from its trailer
    alone (no key needed, nothing else read); IntegrityError or OSError when it has none."""
    from dsbackup.archive import format as fmt
    from dsbackup.storage import open_source

    src = open_source(as_location(path))
    try:
        size = src.size
        tail = src.read(max(0, size - fmt.TRAILER_SIZE), min(size, fmt.TRAILER_SIZE))
        return fmt.Trailer.decode(tail, size).encrypted
    finally:
        src.close()


def archive_fingerprint(path: str | os.PathLike[str]) -> str:
    """The archive's fingerprint (summary `fingerprint`; O(1), reads no chunk)."""
    from dsbackup.archive.reader import ArchiveReader

    with ArchiveReader(path) as r:
        return r.fingerprint


def parent_of(path: str | os.PathLike[str]) -> str | None:
    """The fingerprint of the archive's parent, or None for a full backup."""
    from dsbackup.archive.reader import ArchiveReader

    with ArchiveReader(path) as r:
        ref = ParentRef.from_manifest(r.manifest, str(path))
    return None if ref is None else ref.fingerprint


def chain_depth(parent: str | None, parents: Mapping[str, str | None], limit: int,
                ) -> tuple[int, str | None]:
    """Walk down a chain by fingerprints: from an archive whose parent is `parent`, through
    `parents` (fingerprint -> its parent's fingerprint), counting at most `limit` archives.
    (the archives counted, the first parent not followed: None when the chain ends in a full
    backup inside the limit)."""
    depth = 1
    while parent is not None and parent in parents and depth < limit:
        depth += 1
        parent = parents[parent]
    return depth, parent


def choose_parent(archives: Sequence[str | os.PathLike[str]], full_every: int,
                  ) -> Path | None:
    """The parent for the next backup of a schedule, or None when it must be a full backup.

    `archives`: the schedule's existing archives (any order; unreadable ones are ignored). The
    newest (manifest `created`) is the parent unless its chain — itself, its parent, … among
    `archives` — already holds `full_every` archives, so every `full_every`-th run is full
    (`full_every` <= 1: always full).
    """
    from dsbackup.archive.reader import ArchiveReader

    if full_every <= 1:
        return None
    info: list[tuple[str, Path, str, str | None]] = []
    for a in archives:
        try:
            with ArchiveReader(a) as r:
                ref = ParentRef.from_manifest(r.manifest, str(a))
                info.append((str(r.manifest.get("created", "")), Path(a),
                             r.fingerprint, ref.fingerprint if ref else None))
        except (OSError, IntegrityError, KeyError, ValueError) as exc:
            log.info("choose_parent: ignoring %s (%s)", a, exc)
        except Exception as exc:  # ArchiveError and the like: not a usable parent
            log.info("choose_parent: ignoring %s (%s)", a, exc)
    if not info:
        return None
    newest = max(info, key=lambda t: t[0])
    parents = {fp: parent for _, _, fp, parent in info}
    depth, parent = chain_depth(newest[3], parents, full_every)
    if parent is not None and parent not in parents:
        return None  # the newest archive's chain is incomplete here: start afresh
    return None if depth >= full_every else newest[1]


def parent_map(archives: Sequence[str | os.PathLike[str]]) -> dict[Path, Path | None]:
    """Each archive's parent among `archives` (None: a full backup, or a parent not in the
    list), resolved by content identity: among twins of the same fingerprint, the very
    archive the child references. For retention and prune."""
    links = parent_links([ArchiveInfo.read(a) for a in archives])
    return {p: (ps[0] if ps else None) for p, ps in links.items()}


def required_archives(keep: Sequence[str | os.PathLike[str]],
                      archives: Sequence[str | os.PathLike[str]]) -> set[Path]:
    """`keep` plus every archive of `archives` that a kept archive needs (its parent chain;
    every equally good twin when the referenced one is not there): prune may delete only
    archives outside this set."""
    listed = {Path(a) for a in archives}
    paths = [Path(a) for a in archives] + [Path(k) for k in keep if Path(k) not in listed]
    links = parent_links([ArchiveInfo.read(a) for a in paths])
    need: set[Path] = set()
    pending = [Path(k) for k in keep]
    while pending:
        cur = pending.pop()
        if cur not in need:
            need.add(cur)
            pending.extend(links.get(cur, []))
    return need
