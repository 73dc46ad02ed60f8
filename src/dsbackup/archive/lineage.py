"""Which archives depend on which, among the archives of a directory (or any list of files).

Each incremental archive names its parent by fingerprint, index digest and file name. Full
backups of the same data share a fingerprint ("twins"), so a parent is resolved by content
identity with the same ranking the readers use (:func:`dsbackup.archive.chain.parent_rank`):
the very archive the child references, else the best-ranked twins (all of them when several
rank equally) — never "the newest". Used by prune, the scheduler's retention, and the check
that refuses to overwrite an archive others depend on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dsbackup.archive.chain import ParentRef, index_digest, parent_rank
from dsbackup.errors import ArchiveError, IntegrityError
from dsbackup.storage import as_location, identity
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
