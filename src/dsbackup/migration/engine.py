"""Step execution: copy, move, transform, validate and cleanup, batched and checkpointed.

Every phase walks its store in key order (all backends scan in bytewise key order) and, after
syncing what it wrote, journals the last key it handled; a resumed run restarts right after
that key. Every write is idempotent (the same key gets the same value again), so redoing the
records between the last checkpoint and a kill gives exactly what an uninterrupted run gives.

Between two stores a step writes straight into its target. On one store ("in place") a step
cannot write where it is reading, so it goes through a reserved temporary namespace
(``/_DSMIGRATE_<tag>_...``, see :data:`TMP_ROOT`):

1. ``stage``: each record whose key or value changes is written as ``TMP + new key``;
2. ``delete`` (transform only): the records whose key changes are removed;
3. ``apply``: each staged record is written under its new key and its temp key removed.

Chains (``/a -> /p/a`` while ``/p/a -> /p/p/a``) and resumption at any point are then safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from dsbackup.errors import Cancelled, MigrationError
from dsbackup.keys import key_str
from dsbackup.migration.filters import CompiledFilter
from dsbackup.migration.plan import MigrationStep, MigrationType
from dsbackup.migration.result import StepResult
from dsbackup.migration.runtime import (
    MAX_ERROR_MESSAGES,
    TMP_ROOT,
    CompiledTransform,
    ProgressEvent,
    RunContext,
    scan_ranges,
)
from dsbackup.migration.step_cleanup import cleanup
from dsbackup.migration.step_copy import copy_like
from dsbackup.migration.step_validate import validate

__all__ = ["StepRunner"]

log = logging.getLogger(__name__)


class StepRunner:
    """Runs one step between two opened stores (the same object when in place): holds the
    step's state (phase, counts, resume point) and the bookkeeping every phase uses —
    checkpoints, progress, dry-run samples, batched scans, transforms, the error log. The
    phases themselves: step_copy.py, step_inplace.py, step_validate.py, step_cleanup.py."""

    def __init__(self, ctx: RunContext, step: MigrationStep, index: int, tag: str,
                 src: Any, dst: Any, resume: dict[str, Any] | None) -> None:
        self.ctx = ctx
        self.step = step
        self.index = index
        self.tag = tag  # "S3" for steps[3], "R0" for rollback[0]: names the temp namespace
        self.src = src
        self.dst = dst
        self.in_place = src is dst
        self.filt: CompiledFilter = (step.filters.compile(f"{step.id}.filters")
                                     if step.filters else CompiledFilter(b"", None, None))
        self.xf = CompiledTransform.build(step.transform, f"{step.id}.transform")
        self.res = StepResult(step.id, step.kind.value)
        self.resume = resume
        self.phase = ""
        self._last_cp = time.monotonic()
        self._t0 = time.monotonic()
        self.bs = ctx.config.batch_size
        self.bb = ctx.config.batch_bytes
        if resume:
            counts = resume.get("counts", {})
            for k, v in counts.items():
                if hasattr(self.res, k):
                    setattr(self.res, k, v)
            self.res.resumed = True

    def run(self) -> StepResult:
        """Run the step; returns its result (raises on failure)."""
        kind = self.step.kind
        t0 = time.monotonic()
        if kind is MigrationType.COPY:
            copy_like(self, transform_all=False, delete_source=False)
        elif kind is MigrationType.MOVE:
            if self.in_place:
                raise MigrationError(f"step {self.step.id!r}: a move needs two different "
                                     f"stores (source and target are the same)")
            copy_like(self, transform_all=False, delete_source=True)
        elif kind is MigrationType.TRANSFORM:
            copy_like(self, transform_all=True, delete_source=False)
        elif kind is MigrationType.VALIDATE:
            validate(self)
        elif kind is MigrationType.CLEANUP:
            cleanup(self)
        self.res.duration_s = time.monotonic() - t0
        self.res.status = "dry_run" if self.ctx.dry_run else "completed"
        return self.res

    # -- bookkeeping used by the phases ------------------------------------------------------
    @property
    def tmp_prefix(self) -> bytes:
        return TMP_ROOT + self.tag.encode() + b"_"

    def resume_point(self, phase: str) -> bytes | None:
        """The key to continue after, when resuming inside ``phase``."""
        if self.resume and self.resume.get("phase") == phase and self.resume.get("last"):
            return bytes.fromhex(self.resume["last"])
        return None

    def phase_done_before(self, phase: str, order: list[str]) -> bool:
        """True when the journal shows a later phase already started."""
        if not self.resume:
            return False
        cur = self.resume.get("phase")
        return cur in order and order.index(cur) > order.index(phase)

    def checkpoint(self, last: bytes | None, stores: tuple[Any, ...], force: bool = False
                   ) -> None:
        """Sync ``stores`` and journal the last key handled in this phase (at most once a
        ``checkpoint_interval`` unless forced); nothing in a dry run."""
        journal = self.ctx.journal
        now = time.monotonic()
        if self.ctx.dry_run or journal is None:
            return
        if not force and now - self._last_cp < self.ctx.config.checkpoint_interval:
            return
        for s in stores:
            s.sync("/")
        journal.append({"t": "checkpoint", "step": self.index, "id": self.step.id,
                        "phase": self.phase, "last": last.hex() if last else None,
                        "counts": self.res.counts()})
        self._last_cp = now

    def progress(self) -> None:
        self.ctx.check()
        if self.ctx.progress is not None:
            self.ctx.progress(ProgressEvent(self.step.id, self.index, self.ctx.steps_total,
                                            self.phase, self.res.records, self.res.bytes,
                                            time.monotonic() - self._t0))

    def sample(self, keys: list[bytes], values: list[bytes], new_keys: list[bytes],
               new_values: list[bytes], action: str) -> None:
        """A dry run's examples of what the step would do (up to ``sample_size``)."""
        if not self.ctx.dry_run:
            return
        room = self.ctx.config.sample_size - len(self.res.sample)
        for k, v, nk, nv in zip(keys, values, new_keys, new_values):
            if room <= 0:
                return
            if k == nk and v == nv and action != "copy":
                continue
            entry = {"action": action, "key": key_str(k), "size": len(v)}
            if nk != k:
                entry["new_key"] = key_str(nk)
            if nv is not v and nv != v:
                entry["new_size"] = len(nv)
            self.res.sample.append(entry)
            room -= 1

    def scan(self, store: Any, start: bytes, end: bytes | None
             ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Batches of (keys, values) in ``[start, end)``, outside the temporary namespace."""
        for s, e in scan_ranges(start, end):
            yield from store.scan_batches(s, e, max_records=self.bs, max_bytes=self.bb)

    def scan_keys(self, store: Any, start: bytes, end: bytes | None
                  ) -> Iterator[list[bytes]]:
        for s, e in scan_ranges(start, end):
            for keys, _sizes in store.scan_key_sizes(s, e, max_records=self.bs):
                yield keys

    def scan_keys_range(self, ds: Any, start: bytes, end: bytes) -> Iterator[list[bytes]]:
        """Batches of keys in ``[start, end)``, the temporary namespace included."""
        for keys, _ in ds.scan_key_sizes(start, end, max_records=self.bs):
            yield keys

    def changed(self, k0: list[bytes], v0: list[bytes], k1: list[bytes], v1: list[bytes]
                ) -> int:
        """How many records the transform changed (key or value)."""
        if self.xf.identity:
            return 0
        if self.xf.value.identity:
            return sum(1 for a, b in zip(k0, k1) if a != b)
        return sum(1 for a, b, c, d in zip(k0, v0, k1, v1) if a != b or c != d)

    def apply(self, keys: list[bytes], values: list[bytes]
              ) -> tuple[list[bytes], list[bytes]]:
        """The step's transforms over a batch. A record they fail on is counted as an error
        and named: the batch is redone record by record to find it (only on that path)."""
        try:
            return self.xf.apply(keys, values)
        except Cancelled:
            raise
        except Exception as batch_exc:
            bad: bytes | None = None
            cause: Exception = batch_exc
            for k, v in zip(keys, values):
                try:
                    self.xf.apply([k], [v])
                except Exception as one:  # noqa: BLE001 - the first failing record
                    bad, cause = k, one
                    break
            where = f"key {key_str(bad)}" if bad is not None else "a record of a batch"
            msg = f"step {self.step.id!r}: transform failed at {where}: {cause}"
            self.error(msg)
            raise MigrationError(msg) from None

    def split_transform(self, keys: list[bytes], values: list[bytes]
                        ) -> tuple[list[bytes], list[bytes], int, int]:
        """Transform-into-target: selected records are transformed, the rest pass as they are."""
        filt, xf = self.filt, self.xf
        lo, hi = filt.start, filt.end
        keep = filt.keep
        mask = [(lo <= k and (hi is None or k < hi)) and (keep is None or keep(k, v))
                for k, v in zip(keys, values)]
        sel_k = [k for k, m in zip(keys, mask) if m]
        sel_v = [v for v, m in zip(values, mask) if m]
        new_k, new_v = self.apply(sel_k, sel_v)
        xf.check(new_k, new_v, self.step.id, self.dst)
        self.sample(sel_k, sel_v, new_k, new_v, "transform")
        changed = self.changed(sel_k, sel_v, new_k, new_v)
        it_k, it_v = iter(new_k), iter(new_v)
        out_k: list[bytes] = []
        out_v: list[bytes] = []
        for k, v, m in zip(keys, values, mask):
            if m:
                out_k.append(next(it_k))
                out_v.append(next(it_v))
            else:
                out_k.append(k)
                out_v.append(v)
        return out_k, out_v, len(sel_k), changed

    def clear_range(self, ds: Any, start: bytes, end: bytes) -> int:
        """Delete every record in ``[start, end)``; returns how many."""
        n = 0
        while True:
            batch: list[bytes] = []
            for keys, _ in ds.scan_key_sizes(start, end, max_records=self.bs):
                batch = keys
                break
            if not batch:
                return n
            with ds.batch() as b:
                for k in batch:
                    b.delete(k)
            n += len(batch)

    def error(self, msg: str) -> None:
        """Count a record error and log it."""
        self.res.errors += 1
        self.error_log(msg)

    def error_log(self, msg: str) -> None:
        """Log ``msg`` in the run's error log (up to MAX_ERROR_MESSAGES)."""
        if len(self.ctx.error_log) < MAX_ERROR_MESSAGES:
            self.ctx.error_log.append(msg)
            log.warning("%s", msg)
