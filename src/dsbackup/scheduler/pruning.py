"""Retention over real archive files: one code path for `dsbackup prune` and the scheduler.

Retention rules run per group (an archive name, or one schedule); then every ancestor of every
kept archive is kept too, whatever its name or group, with the reason saying whose parent it
is. Parents are resolved from the archives' own manifests by content identity
(:mod:`dsbackup.archive.lineage`): of twins sharing a fingerprint, the archive the child really
references is kept, never simply the newest. Archives of the pool that no group manages (other
names, hand-named archives) are not deleted by the run, so their ancestors are kept as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone, tzinfo
from pathlib import Path

from dsbackup.archive.lineage import (
    ArchiveInfo,
    Leftover,
    in_progress,
    parent_links,
    read_infos,
    read_lineage,
    resumable_leftovers,
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
from dsbackup.storage.holds import holds_in
from dsbackup.storage.tempfiles import TEMP_STEM_ROOM, name_stem

log = logging.getLogger(__name__)


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


def _within(name: str, where: Path, pool: Sequence[Path]) -> bool:
    """Whether the archive file `name` of `pool` lies in the directory (prefix) `where`."""
    return any(p.name == name and p.parent == where for p in pool)


def _resumable_reason(lo: Leftover) -> str:
    return (f"parent of {lo.final}, whose killed backup left {lo.path} for backup --resume "
            "to finish (delete that file to let this archive go)")


def plan_retention(groups: Mapping[str, Sequence[RetentionItem]], pool: Iterable[Path],
                   policy: RetentionPolicy, now: datetime, tz: tzinfo | None = None, *,
                   fallback_parents: Mapping[str, Sequence[str]] | None = None,
                   newest: str | None = None, unseen: list[str] | None = None,
                   assume_no_uploads: bool = False) -> dict[str, RetentionResult]:
    """Decisions per group. Item ids are file names; `pool`: every archive file that may be a
    link of a chain (the groups' files and their neighbours). `fallback_parents`: parents for
    ids whose file cannot be read (e.g. from the scheduler's state). `newest`: the archive the
    calling run has just made, kept whatever the rules say (after a clock stepped back, older
    archives carry later times than it, and the rules would keep them instead). `unseen`:
    gets one message per directory (prefix) whose running backups could not be listed (its
    archives are all kept, unless `assume_no_uploads`: the user knows none is being written
    there, and the message says its archives were pruned as usual)."""
    pool = list(pool)
    # archives being written now (a live writer's temp file, an S3 upload that is not stale)
    # are children too: their parents stay (docs/CLI.md `prune`)
    directories = sorted({p.parent for p in pool}, key=str)
    known, unread, blind = in_progress(directories)
    # and a killed incremental that `backup --resume` can finish: its parent chain stays
    # while its temp file is there (docs/CLI.md `prune`, rule resumable)
    holds = [h for d in directories if isinstance(d, Path) for h in holds_in(d)]
    # a killed backup writing elsewhere, whose dead hold names its archive: its temp file too
    elsewhere = {(Path(h.child).parent, name_stem(Path(h.child).name, TEMP_STEM_ROOM))
                 for h in holds if not h.live and os.path.isabs(h.child)}  # (a local archive's)
    left, left_sealed = resumable_leftovers(directories)
    more, more_sealed = resumable_leftovers(sorted({d for d, _ in elsewhere} - set(directories)))
    left += [(lo, i) for lo, i in more if (lo.path.parent, lo.final) in elsewhere]
    left_sealed += [lo for lo in more_sealed if (lo.path.parent, lo.final) in elsewhere]
    parents, opaque = _lineage(pool, [info for _, info in known] + [i for _, i in left])
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
    for where, err in blind:  # its running backups cannot be seen: any archive may be a parent
        if assume_no_uploads:
            log.warning("%s: cannot see the backups being written there (%s); pruned as if "
                        "none were (--assume-no-uploads)", where, err)
            continue
        log.warning("%s: cannot see the backups being written there (%s): every archive there "
                    "is kept, any of them may be the parent of one (prune --assume-no-uploads "
                    "if none is)", where, err)
        if unseen is not None:
            unseen.append(f"{where}: cannot see the backups being written there ({err})")
        for res in results.values():
            for d in list(res.pruned):
                if _within(d.id, where, pool):
                    keep_anyway(res, d.id, "maybe-parent",
                                f"may be the parent of a backup being written to {where}, "
                                f"whose unfinished uploads cannot be listed ({err})")
    for h in holds:  # an archive a backup elsewhere reads as its parent (storage/holds.py)
        if h.live:
            for res in results.values():
                keep_anyway(res, h.archive, "in-progress",
                            f"parent of {h.child or 'a backup'}, being written now "
                            f"(PID {h.pid})")
    for lo, info in left:
        for parent in parents.get(info.path.name, []):
            for res in results.values():
                keep_anyway(res, parent, "resumable", _resumable_reason(lo))
    for lo in left_sealed:
        for res in results.values():
            for d in list(res.pruned):
                if d.timestamp <= lo.written:
                    keep_anyway(res, d.id, "resumable", "may be the " + _resumable_reason(lo)
                                + "; it is encrypted, so its parent cannot be read", str(lo.path))
    grouped = {i.id for items in groups.values() for i in items}
    unmanaged = (sorted({p.name for p in pool} - grouped) + [i.path.name for _, i in known]
                 + [i.path.name for _, i in left])
    protect_ancestors(list(results.values()), parents, also_kept=unmanaged)
    return results
