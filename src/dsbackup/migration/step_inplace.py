"""A copy or transform on one store, through the temporary namespace (engine.py's module
docstring): ``stage`` the changed records under temp keys, ``delete`` the records whose key
changes, ``apply`` the staged records under their new keys. A failure while staging removes
the staged records again; later, only ``--resume`` can finish the step."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dsbackup.errors import Cancelled
from dsbackup.migration.runtime import after, prefix_end

if TYPE_CHECKING:
    from dsbackup.migration.engine import StepRunner

log = logging.getLogger(__name__)


def in_place(r: StepRunner, delete_old: bool) -> None:
    """A copy (``delete_old`` false: the records keep their keys) or transform on one store,
    resumable in each of its phases."""
    ds = r.src
    prefix = r.tmp_prefix
    order = ["stage", "delete", "apply"]
    if not r.ctx.dry_run and not r.resume:
        r.clear_range(ds, prefix, prefix_end(prefix))  # leftovers of an old attempt
    if not r.phase_done_before("stage", order):
        try:
            _stage(r, delete_old)
        except Exception as exc:
            if not isinstance(exc, Cancelled) and not r.ctx.dry_run:
                _revert_stage(r, exc)
            raise
    try:
        _replace_staged(r, delete_old, order)
    except Exception as exc:
        if not isinstance(exc, Cancelled):
            # originals are being replaced: only --resume can finish the step now
            exc.dsmigrate_partial = True  # type: ignore[attr-defined]
        raise


def _revert_stage(r: StepRunner, exc: Exception) -> None:
    """A failure while staging: only temp keys were written, so removing them puts the
    store back exactly as it was; the journal's checkpoint of this step is reset (a
    resume restages from the start)."""
    ds, prefix = r.src, r.tmp_prefix
    try:
        n = r.clear_range(ds, prefix, prefix_end(prefix))
        ds.sync("/")
        if r.ctx.journal is not None:
            r.ctx.journal.append({"t": "checkpoint", "step": r.index,
                                  "id": r.step.id, "phase": "stage", "last": None,
                                  "counts": {}})
    except Exception:  # noqa: BLE001 - the step's own error is what the user sees
        log.exception("step %s: removing the staged records failed", r.step.id)
        exc.dsmigrate_partial = True  # type: ignore[attr-defined]
        return
    exc.dsmigrate_reverted = (  # type: ignore[attr-defined]
        f"its {n} staged record(s) were removed: the store is as before")


def _stage(r: StepRunner, delete_old: bool) -> None:
    """Phase 1: each record whose key or value changes is written as TMP + new key."""
    ds, filt, xf = r.src, r.filt, r.xf
    prefix = r.tmp_prefix
    r.phase = "stage"
    start = filt.start
    resume = r.resume_point("stage")
    if resume is not None:
        start = after(resume)
    res = r.res
    for keys, values in r.scan(ds, start, filt.end):
        sel_k, sel_v, skipped = filt.select(keys, values)
        new_k, new_v = r.apply(sel_k, sel_v)
        xf.check(new_k, new_v, r.step.id, ds)
        r.sample(sel_k, sel_v, new_k, new_v, "transform")
        res.records += len(sel_k)
        res.skipped += skipped
        tk = [prefix + nk[1:] for k, v, nk, nv in zip(sel_k, sel_v, new_k, new_v)
              if k != nk or v != nv]
        tv = [nv for k, v, nk, nv in zip(sel_k, sel_v, new_k, new_v)
              if k != nk or v != nv]
        res.changed += len(tk)
        res.bytes += sum(map(len, tv))
        if delete_old:  # records whose key changes lose their old key
            res.deleted += sum(1 for k, nk in zip(sel_k, new_k) if k != nk)
        if tk and not r.ctx.dry_run:
            ds.put_many(tk, tv)
        r.checkpoint(keys[-1], (ds,))
        r.progress()
    r.phase = "delete" if delete_old else "apply"
    r.checkpoint(None, (ds,), force=True)


def _replace_staged(r: StepRunner, delete_old: bool, order: list[str]) -> None:
    """Phases 2 and 3: remove records whose key changes, then move the staged records
    to their new keys."""
    ds, filt, xf = r.src, r.filt, r.xf
    prefix = r.tmp_prefix
    if delete_old and not r.phase_done_before("delete", order):
        r.phase = "delete"
        start = filt.start
        resume = r.resume_point("delete")
        if resume is not None:
            start = after(resume)
        for keys, values in r.scan(ds, start, filt.end):
            sel_k, _, _ = filt.select(keys, values)
            new_k = xf.key.apply_batch(sel_k) if not xf.key.identity else sel_k
            gone = [k for k, nk in zip(sel_k, new_k) if k != nk]
            if gone and not r.ctx.dry_run:
                with ds.batch() as b:
                    for k in gone:
                        b.delete(k)
            r.checkpoint(keys[-1], (ds,))
            r.progress()
        r.phase = "apply"
        r.checkpoint(None, (ds,), force=True)
    r.phase = "apply"
    if r.ctx.dry_run:
        r.res.written = r.res.changed
        return
    n = len(prefix)
    if not (r.resume and r.resume.get("phase") == "apply"):
        # count what is staged (distinct new keys) before applying, so the count is
        # exact whether or not this phase is later interrupted
        for keys in r.scan_keys_range(ds, prefix, prefix_end(prefix)):
            r.res.written += len(keys)
        r.checkpoint(None, (ds,), force=True)
    for keys, values in ds.scan_batches(prefix, prefix_end(prefix), max_records=r.bs,
                                        max_bytes=r.bb):
        ds.put_many([b"/" + k[n:] for k in keys], values)
        with ds.batch() as b:
            for k in keys:
                b.delete(k)
        r.checkpoint(keys[-1], (ds,))
        r.progress()
    ds.sync("/")
