"""Cleanup steps: remove leftover temporary records and the records the filters select,
compact the store, and ask for the journal to be removed once the stamp is written."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsbackup.migration.runtime import TMP_END, TMP_ROOT

if TYPE_CHECKING:
    from dsbackup.migration.engine import StepRunner


def cleanup(r: StepRunner) -> None:
    """A cleanup step on its target store."""
    r.phase = "cleanup"
    ds = r.dst
    if r.ctx.dry_run:
        for keys in r.scan_keys_range(ds, TMP_ROOT, TMP_END):
            r.res.deleted += len(keys)
    else:
        r.res.deleted += r.clear_range(ds, TMP_ROOT, TMP_END)
    if r.step.filters is not None and not r.step.filters.empty:
        filt = r.filt
        for keys, values in r.scan(ds, filt.start, filt.end):
            sel, _, skipped = filt.select(keys, values)
            r.res.records += len(sel)
            r.res.skipped += skipped
            if sel and not r.ctx.dry_run:
                with ds.batch() as b:
                    for k in sel:
                        b.delete(k)
            r.res.deleted += len(sel)
            r.progress()
    compacted = False
    if not r.ctx.dry_run:
        ds.sync("/")
        compact = getattr(ds, "compact", None)
        if callable(compact):
            compact()
            compacted = True
        r.ctx.cleanup_requested = True
    r.res.message = (f"removed {r.res.deleted} record(s)"
                     + ("; compacted" if compacted else "")
                     + "; journal removed once the stamp is written")
