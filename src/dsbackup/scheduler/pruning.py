"""Retention over real archive files: one code path for `dsbackup prune` and the scheduler.

Retention rules run per group (an archive name, or one schedule); then every ancestor of every
kept archive is kept too, whatever its name or group, with the reason saying whose parent it
is. Parents are resolved from the archives' own manifests by content identity
(:mod:`dsbackup.archive.lineage`): of twins sharing a fingerprint, the archive the child really
references is kept, never simply the newest. Archives of the pool that no group manages (other
names, hand-named archives) are not deleted by the run, so their ancestors are kept as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone, tzinfo
from pathlib import Path

from dsbackup.archive.lineage import (
    ArchiveInfo,
    in_progress,
    parent_links,
    read_infos,
    read_lineage,
)
from dsbackup.scheduler.retention import (
    RetentionItem,
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    keep_anyway,
    newest_written,
    protect_ancestors,
)


def parent_ids(pool: Iterable[Path]) -> dict[str, list[str]]:
    """File name -> the file names of its parent(s) among `pool` (unreadable files: none)."""
    infos, _ = read_infos(pool)
    return {p.name: [q.name for q in ps] for p, ps in parent_links(infos).items()}


def _lineage(pool: Iterable[Path], live: Sequence[ArchiveInfo] = (),
             ) -> tuple[dict[str, list[str]], list[Path]]:
    """(file name -> its parents' file names, the archives whose parents cannot be known:
    :func:`dsbackup.archive.lineage.read_lineage`). `live`: archives being written, whose
    parents are resolved among the pool too."""
    infos, opaque = read_lineage(pool)
    links = parent_links([*infos, *live])
    return {p.name: [q.name for q in ps] for p, ps in links.items()}, opaque


def _written_by(path: Path) -> datetime | None:
    """When `path` was written at the latest (its mtime, or its scheduled name's time when
    later), None when unknown (an object without a scheduled name): its parents were all
    created before."""
    from dsbackup.scheduler.archives import parse_archive_name

    named = parse_archive_name(path.name)
    times = [named[1]] if named else []
    if isinstance(path, Path):
        try:
            times.append(datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc))
        except OSError:
            return None
    return max(times) if times else None


def plan_retention(groups: Mapping[str, Sequence[RetentionItem]], pool: Iterable[Path],
                   policy: RetentionPolicy, now: datetime, tz: tzinfo | None = None, *,
                   fallback_parents: Mapping[str, Sequence[str]] | None = None,
                   newest: str | None = None) -> dict[str, RetentionResult]:
    """Decisions per group. Item ids are file names; `pool`: every archive file that may be a
    link of a chain (the groups' files and their neighbours). `fallback_parents`: parents for
    ids whose file cannot be read (e.g. from the scheduler's state). `newest`: the archive the
    calling run has just made, kept whatever the rules say (after a clock stepped back, older
    archives carry later times than it, and the rules would keep them instead)."""
    pool = list(pool)
    # archives being written now (a live writer's temp file, an S3 upload that is not stale)
    # are children too: their parents stay (docs/CLI.md `prune`)
    known, unread = in_progress(sorted({p.parent for p in pool}, key=str))
    parents, opaque = _lineage(pool, [info for _, info in known])
    for k, v in (fallback_parents or {}).items():
        if not parents.get(k):
            parents[k] = list(v)
    results = {g: apply_retention([replace(i, parent=None) for i in items], policy, now, tz)
               for g, items in groups.items()}
    if newest is not None:
        for res in results.values():
            keep_anyway(res, newest, "this-run", "the archive this run has just made")
    # after a clock stepped back the latest-dated archive need not be the last written
    dated = {i.id: i.timestamp for items in groups.values() for i in items}
    for g, items in groups.items():
        for id_, why in newest_written(items, parents, dated, now).items():
            keep_anyway(results[g], id_, "newest-written", why)
    for unknown in opaque:  # any older archive may be its parent: none is deleted
        if unknown.name in (fallback_parents or {}):
            continue
        when = _written_by(unknown)
        for res in results.values():
            for d in list(res.pruned):
                if when is None or d.timestamp <= when:
                    keep_anyway(res, d.id, "maybe-parent",
                                f"may be the parent of {unknown.name}, whose parent cannot be "
                                "read (encrypted without its key, or a newer format)",
                                unknown.name)
    for w, info in known:
        for parent in parents.get(info.path.name, []):
            for res in results.values():
                keep_anyway(res, parent, "in-progress",
                            f"parent of {w.final}, being written now ({w.who})")
    for w in unread:
        for res in results.values():
            for d in list(res.pruned):
                if d.timestamp <= w.started:
                    keep_anyway(res, d.id, "maybe-parent",
                                f"may be the parent of {w.final}, being written now "
                                f"({w.who}), whose parent cannot be read yet", str(w.final))
    grouped = {i.id for items in groups.values() for i in items}
    unmanaged = sorted({p.name for p in pool} - grouped) + [i.path.name for _, i in known]
    protect_ancestors(list(results.values()), parents, also_kept=unmanaged)
    return results
