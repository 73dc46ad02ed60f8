"""Retention over real archive files: one code path for `dsbackup prune` and the scheduler.

Retention rules run per group (an archive name, or one schedule); then every ancestor of every
kept archive is kept too, whatever its name or group, with the reason saying whose parent it
is. Parents are resolved from the archives' own manifests by content identity
(:mod:`dsbackup.archive.lineage`): of twins sharing a fingerprint, the archive the child really
references is kept, never simply the newest. Archives of the pool that no group manages (other
names, hand-named archives) are not deleted by the run, so their ancestors are kept as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, tzinfo
from pathlib import Path

from dsbackup.archive.lineage import parent_links, read_infos
from dsbackup.scheduler.retention import (
    RetentionItem,
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    keep_anyway,
    protect_ancestors,
)


def parent_ids(pool: Iterable[Path]) -> dict[str, list[str]]:
    """File name -> the file names of its parent(s) among `pool` (unreadable files: none)."""
    infos, _ = read_infos(pool)
    return {p.name: [q.name for q in ps] for p, ps in parent_links(infos).items()}


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
    parents = parent_ids(pool)
    for k, v in (fallback_parents or {}).items():
        if not parents.get(k):
            parents[k] = list(v)
    results = {g: apply_retention([replace(i, parent=None) for i in items], policy, now, tz)
               for g, items in groups.items()}
    if newest is not None:
        for res in results.values():
            keep_anyway(res, newest, "this-run", "the archive this run has just made")
    grouped = {i.id for items in groups.values() for i in items}
    unmanaged = sorted({p.name for p in pool} - grouped)
    protect_ancestors(list(results.values()), parents, also_kept=unmanaged)
    return results
