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
from collections.abc import Callable, Iterator
from typing import Any

from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.errors import (
    Cancelled,
    DatastoreError,
    MigrationError,
    NotFound,
    ValidationError,
)
from dsbackup.keys import key_str
from dsbackup.migration import lmdbfast
from dsbackup.migration.filters import CompiledFilter
from dsbackup.migration.plan import MigrationStep, MigrationType
from dsbackup.migration.result import StepResult
from dsbackup.migration.runtime import (
    MAX_ERROR_MESSAGES,
    TMP_END,
    TMP_ROOT,
    CompiledTransform,
    ProgressEvent,
    RunContext,
    after,
    prefix_end,
    scan_ranges,
    stored_keys,
)

__all__ = ["StepRunner"]

# backends where a short range scan is cheap (a seek); others (flatfs lists its shard
# directories for any range) are compared key by key with get()
_RANGE_SCANS = {"lmdb", "leveldb", "sqlite", "memory"}

log = logging.getLogger(__name__)

class StepRunner:
    """Runs one step between two opened stores (the same object when in place)."""

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

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def tmp_prefix(self) -> bytes:
        return TMP_ROOT + self.tag.encode() + b"_"

    def _resume_point(self, phase: str) -> bytes | None:
        """The key to continue after, when resuming inside ``phase``."""
        if self.resume and self.resume.get("phase") == phase and self.resume.get("last"):
            return bytes.fromhex(self.resume["last"])
        return None

    def _phase_done_before(self, phase: str, order: list[str]) -> bool:
        """True when the journal shows a later phase already started."""
        if not self.resume:
            return False
        cur = self.resume.get("phase")
        return cur in order and order.index(cur) > order.index(phase)

    def _checkpoint(self, last: bytes | None, stores: tuple[Any, ...], force: bool = False
                    ) -> None:
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

    def _progress(self) -> None:
        self.ctx.check()
        if self.ctx.progress is not None:
            self.ctx.progress(ProgressEvent(self.step.id, self.index, self.ctx.steps_total,
                                            self.phase, self.res.records, self.res.bytes,
                                            time.monotonic() - self._t0))

    def _sample(self, keys: list[bytes], values: list[bytes], new_keys: list[bytes],
                new_values: list[bytes], action: str) -> None:
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

    def _scan(self, store: Any, start: bytes, end: bytes | None
              ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        for s, e in scan_ranges(start, end):
            yield from store.scan_batches(s, e, max_records=self.bs, max_bytes=self.bb)

    def _scan_keys(self, store: Any, start: bytes, end: bytes | None
                   ) -> Iterator[list[bytes]]:
        for s, e in scan_ranges(start, end):
            for keys, _sizes in store.scan_key_sizes(s, e, max_records=self.bs):
                yield keys

    def _changed(self, k0: list[bytes], v0: list[bytes], k1: list[bytes], v1: list[bytes]
                 ) -> int:
        if self.xf.identity:
            return 0
        if self.xf.value.identity:
            return sum(1 for a, b in zip(k0, k1) if a != b)
        return sum(1 for a, b, c, d in zip(k0, v0, k1, v1) if a != b or c != d)

    def _apply(self, keys: list[bytes], values: list[bytes]
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
            self._error(msg)
            raise MigrationError(msg) from None

    # -- entry -------------------------------------------------------------------------------
    def run(self) -> StepResult:
        kind = self.step.kind
        t0 = time.monotonic()
        if kind is MigrationType.COPY:
            self._copy_like(transform_all=False, delete_source=False)
        elif kind is MigrationType.MOVE:
            if self.in_place:
                raise MigrationError(f"step {self.step.id!r}: a move needs two different "
                                     f"stores (source and target are the same)")
            self._copy_like(transform_all=False, delete_source=True)
        elif kind is MigrationType.TRANSFORM:
            self._copy_like(transform_all=True, delete_source=False)
        elif kind is MigrationType.VALIDATE:
            self._validate()
        elif kind is MigrationType.CLEANUP:
            self._cleanup()
        self.res.duration_s = time.monotonic() - t0
        self.res.status = "dry_run" if self.ctx.dry_run else "completed"
        return self.res

    # -- copy / move / transform -----------------------------------------------------------
    def _copy_like(self, *, transform_all: bool, delete_source: bool) -> None:
        if self.in_place:
            self._in_place(delete_old=transform_all)
            return
        order = ["copy", "verify", "delete"]
        if not self._phase_done_before("copy", order):
            self.phase = "copy"
            self._copy_phase(transform_all)
            self.phase = "verify"
            self._checkpoint(None, (self.dst,), force=True)
        if self.ctx.config.verify_migration and not self._phase_done_before("verify", order):
            self.phase = "verify"
            if not self.ctx.dry_run:
                errors = self._native_verify(transform_all)
                if errors is None:
                    errors = self._compare(self.src, self.dst, transform_all,
                                           run_validators=False)
                if errors:
                    raise ValidationError(f"step {self.step.id!r}: verification failed: "
                                          f"{errors} record(s) differ between "
                                          f"{self.src.uri} and {self.dst.uri}")
        if delete_source:
            self.phase = "delete"
            self._checkpoint(self._resume_point("delete"), (self.dst,), force=True)
            self._delete_phase()
            if not self.ctx.dry_run:
                self.src.sync("/")
            self.res.deleted = self.res.records  # exactly the records the copy selected

    def _copy_phase(self, transform_all: bool) -> None:
        filt, xf, dst = self.filt, self.xf, self.dst
        resume = self._resume_point("copy")
        whole = transform_all and filt.keep is None and filt.start == b"" and filt.end is None
        start, end = (b"", None) if transform_all else (filt.start, filt.end)
        if resume is not None:
            start = after(resume)
        pass_through = xf.identity and not xf.validators and filt.keep is None
        res = self.res
        if pass_through and not self.ctx.dry_run and lmdbfast.applicable(self.src, dst):
            if self._native_copy(start, end):
                return
            for s, e in scan_ranges(start, end):
                for last, n, nbytes in lmdbfast.copy_batches(self.src, dst, s, e, self.bs):
                    res.records += n
                    res.written += n
                    res.bytes += nbytes
                    self._checkpoint(last, (dst,))
                    self._progress()
            return
        for keys, values in self._scan(self.src, start, end):
            last = keys[-1]
            if transform_all and not whole:
                out_k, out_v, n_sel, changed = self._split_transform(keys, values)
                res.records += n_sel
                res.skipped += len(keys) - n_sel
                res.changed += changed
            else:
                if pass_through:
                    out_k, out_v, skipped = keys, values, 0
                    res.records += len(keys)
                    if self.ctx.dry_run:
                        self._sample(keys, values, keys, values, "copy")
                else:
                    sel_k, sel_v, skipped = filt.select(keys, values)
                    out_k, out_v = self._apply(sel_k, sel_v)
                    xf.check(out_k, out_v, self.step.id, dst)
                    res.records += len(sel_k)
                    res.changed += self._changed(sel_k, sel_v, out_k, out_v)
                    self._sample(sel_k, sel_v, out_k, out_v, "copy")
                res.skipped += skipped
            if out_k:
                if not self.ctx.dry_run:
                    dst.put_many(out_k, out_v)
                res.written += len(out_k)
                res.bytes += sum(map(len, out_v))
            self._checkpoint(last, (dst,))
            self._progress()

    def _native_verify(self, transform_all: bool) -> int | None:
        """The post-copy comparison with liblmdb when the copy could go native; ``None``
        when it cannot (then the Python comparison runs)."""
        filt, xf = self.filt, self.xf
        lend = self.ctx.exclusive
        if (lend is None or not lmdbfast.native_available() or transform_all
                or not (xf.identity and not xf.validators and filt.keep is None)
                or not lmdbfast.applicable(self.src, self.dst)):
            return None
        src_path, dst_path = str(self.src.path), str(self.dst.path)
        try:
            holder = lend(self.src, self.dst)
        except ValueError:
            return None
        errors = 0
        with holder:
            for s, e in scan_ranges(filt.start, filt.end):
                self.ctx.check()
                n, _nbytes, bad, key, kind = lmdbfast.native_compare(src_path, dst_path, s, e)
                if bad:
                    errors += bad
                    self.res.errors += bad
                    self._error_log(f"step {self.step.id!r}: key {key_str(key)} "
                                    f"{'missing in' if kind == 'missing' else 'differs in'} "
                                    f"target (first of {bad})")
        self.src, self.dst = holder.stores
        return errors

    def _native_copy(self, start: bytes, end: bytes | None) -> bool:
        """Copy with liblmdb (GIL released) while the run lends both stores; False when that
        is not possible (stores not ours to close, module not built)."""
        lend = self.ctx.exclusive
        if lend is None or not lmdbfast.native_available():
            return False
        res = self.res
        src_path, dst_path = str(self.src.path), str(self.dst.path)
        try:
            holder = lend(self.src, self.dst)
        except ValueError:
            return False
        with holder:
            for s, e in scan_ranges(start, end):
                with lmdbfast.native_copier(src_path, dst_path, s, e) as copier:
                    target = lmdbfast.NativeTarget(copier)
                    while True:
                        try:
                            last, n, nbytes = copier.copy(self.bs, self.bb)
                        except OSError as exc:
                            if not is_no_space(exc):
                                raise DatastoreError(f"{dst_path}: LMDB copy failed: "
                                                     f"{exc}") from None
                            raise DatastoreError(no_space_message(
                                dst_path, getattr(exc, "needed", None),
                                getattr(exc, "free", None),
                                what="free some space and rerun the migration")) from None
                        if not n:
                            break
                        res.records += n
                        res.written += n
                        res.bytes += nbytes
                        self._checkpoint(last, (target,))
                        self._progress()
                    copier.sync()
        self.src, self.dst = holder.stores
        return True

    def _split_transform(self, keys: list[bytes], values: list[bytes]
                         ) -> tuple[list[bytes], list[bytes], int, int]:
        """Transform-into-target: selected records are transformed, the rest pass as they are."""
        filt, xf = self.filt, self.xf
        lo, hi = filt.start, filt.end
        keep = filt.keep
        mask = [(lo <= k and (hi is None or k < hi)) and (keep is None or keep(k, v))
                for k, v in zip(keys, values)]
        sel_k = [k for k, m in zip(keys, mask) if m]
        sel_v = [v for v, m in zip(values, mask) if m]
        new_k, new_v = self._apply(sel_k, sel_v)
        xf.check(new_k, new_v, self.step.id, self.dst)
        self._sample(sel_k, sel_v, new_k, new_v, "transform")
        changed = self._changed(sel_k, sel_v, new_k, new_v)
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

    def _delete_phase(self) -> None:
        """Move, second half: remove the moved records from the source (copy is durable)."""
        filt = self.filt
        start = filt.start
        resume = self._resume_point("delete")
        if resume is not None:
            start = after(resume)
        if filt.keep is None:
            batches: Iterator[tuple[list[bytes], list[bytes] | None]] = (
                (ks, None) for ks in self._scan_keys(self.src, start, filt.end))
        else:
            batches = self._scan(self.src, start, filt.end)
        for keys, values in batches:
            sel = keys if values is None else filt.select(keys, values)[0]
            if sel and not self.ctx.dry_run:
                with self.src.batch() as b:
                    for k in sel:
                        b.delete(k)
            self._checkpoint(keys[-1], (self.src,))
            self._progress()

    # -- in place ----------------------------------------------------------------------------
    def _in_place(self, delete_old: bool) -> None:
        ds = self.src
        prefix = self.tmp_prefix
        order = ["stage", "delete", "apply"]
        if not self.ctx.dry_run and not self.resume:
            self._clear_range(ds, prefix, prefix_end(prefix))  # leftovers of an old attempt
        if not self._phase_done_before("stage", order):
            try:
                self._stage(delete_old)
            except Exception as exc:
                if not isinstance(exc, Cancelled) and not self.ctx.dry_run:
                    self._revert_stage(exc)
                raise
        try:
            self._replace_staged(delete_old, order)
        except Exception as exc:
            if not isinstance(exc, Cancelled):
                # originals are being replaced: only --resume can finish the step now
                exc.dsmigrate_partial = True  # type: ignore[attr-defined]
            raise

    def _revert_stage(self, exc: Exception) -> None:
        """A failure while staging: only temp keys were written, so removing them puts the
        store back exactly as it was; the journal's checkpoint of this step is reset (a
        resume restages from the start)."""
        ds, prefix = self.src, self.tmp_prefix
        try:
            n = self._clear_range(ds, prefix, prefix_end(prefix))
            ds.sync("/")
            if self.ctx.journal is not None:
                self.ctx.journal.append({"t": "checkpoint", "step": self.index,
                                         "id": self.step.id, "phase": "stage", "last": None,
                                         "counts": {}})
        except Exception:  # noqa: BLE001 - the step's own error is what the user sees
            log.exception("step %s: removing the staged records failed", self.step.id)
            exc.dsmigrate_partial = True  # type: ignore[attr-defined]
            return
        exc.dsmigrate_reverted = (  # type: ignore[attr-defined]
            f"its {n} staged record(s) were removed: the store is as before")

    def _stage(self, delete_old: bool) -> None:
        """Phase 1: each record whose key or value changes is written as TMP + new key."""
        ds, filt, xf = self.src, self.filt, self.xf
        prefix = self.tmp_prefix
        self.phase = "stage"
        start = filt.start
        resume = self._resume_point("stage")
        if resume is not None:
            start = after(resume)
        res = self.res
        for keys, values in self._scan(ds, start, filt.end):
            sel_k, sel_v, skipped = filt.select(keys, values)
            new_k, new_v = self._apply(sel_k, sel_v)
            xf.check(new_k, new_v, self.step.id, ds)
            self._sample(sel_k, sel_v, new_k, new_v, "transform")
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
            if tk and not self.ctx.dry_run:
                ds.put_many(tk, tv)
            self._checkpoint(keys[-1], (ds,))
            self._progress()
        self.phase = "delete" if delete_old else "apply"
        self._checkpoint(None, (ds,), force=True)

    def _replace_staged(self, delete_old: bool, order: list[str]) -> None:
        """Phases 2 and 3: remove records whose key changes, then move the staged records
        to their new keys."""
        ds, filt, xf = self.src, self.filt, self.xf
        prefix = self.tmp_prefix
        if delete_old and not self._phase_done_before("delete", order):
            self.phase = "delete"
            start = filt.start
            resume = self._resume_point("delete")
            if resume is not None:
                start = after(resume)
            for keys, values in self._scan(ds, start, filt.end):
                sel_k, _, _ = filt.select(keys, values)
                new_k = xf.key.apply_batch(sel_k) if not xf.key.identity else sel_k
                gone = [k for k, nk in zip(sel_k, new_k) if k != nk]
                if gone and not self.ctx.dry_run:
                    with ds.batch() as b:
                        for k in gone:
                            b.delete(k)
                self._checkpoint(keys[-1], (ds,))
                self._progress()
            self.phase = "apply"
            self._checkpoint(None, (ds,), force=True)
        self.phase = "apply"
        if self.ctx.dry_run:
            self.res.written = self.res.changed
            return
        n = len(prefix)
        if not (self.resume and self.resume.get("phase") == "apply"):
            # count what is staged (distinct new keys) before applying, so the count is
            # exact whether or not this phase is later interrupted
            for keys in self._scan_keys_range(ds, prefix, prefix_end(prefix)):
                self.res.written += len(keys)
            self._checkpoint(None, (ds,), force=True)
        for keys, values in ds.scan_batches(prefix, prefix_end(prefix), max_records=self.bs,
                                            max_bytes=self.bb):
            ds.put_many([b"/" + k[n:] for k in keys], values)
            with ds.batch() as b:
                for k in keys:
                    b.delete(k)
            self._checkpoint(keys[-1], (ds,))
            self._progress()
        ds.sync("/")

    def _clear_range(self, ds: Any, start: bytes, end: bytes) -> int:
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

    # -- compare / validate ------------------------------------------------------------------
    def _compare(self, src: Any, dst: Any, transform_all: bool, run_validators: bool) -> int:
        """Every selected source record, transformed, is in ``dst`` with the same value.
        Returns the number of records that are missing or differ."""
        filt = self.filt
        start, end = (b"", None) if transform_all else (filt.start, filt.end)
        errors = 0
        for keys, values in self._scan(src, start, end):
            if transform_all and not (filt.keep is None and filt.start == b""
                                      and filt.end is None):
                ek, ev, _, _ = self._split_transform(keys, values)
                sel = len(keys)
            else:
                sk, sv, _ = filt.select(keys, values)
                ek, ev = self._apply(sk, sv)
                sel = len(sk)
            if run_validators:
                errors += self._run_validators(ek, ev)
                self.res.records += sel
                self.res.bytes += sum(map(len, ev))
            if not ek:
                continue
            errors += self._compare_batch(dst, ek, ev)
            self._progress()
        return errors

    def _compare_batch(self, dst: Any, ek: list[bytes], ev: list[bytes]) -> int:
        if self.xf.key.identity and getattr(dst, "scheme", "") in _RANGE_SCANS:
            # keys still sorted: read the same range of the target in one scan
            got: dict[bytes, bytes] = {}
            dk_all: list[bytes] = []
            dv_all: list[bytes] = []
            for dk, dv in dst.scan_batches(ek[0], after(ek[-1]), max_records=1 << 30,
                                           max_bytes=1 << 62):
                dk_all += dk
                dv_all += dv
            if dk_all == ek and dv_all == ev:
                return 0
            got = dict(zip(dk_all, dv_all))
            return self._diff(ek, ev, got.get)
        # keys in any order: later source records win, as when they were written
        expected = dict(zip(ek, ev))

        def lookup(k: bytes) -> bytes | None:
            try:
                return dst.get(k)
            except NotFound:
                return None
        return self._diff(list(expected), list(expected.values()), lookup)

    def _diff(self, ek: list[bytes], ev: list[bytes], lookup: Callable[[bytes], Any]) -> int:
        errors = 0
        for k, v in zip(ek, ev):
            got = lookup(k)
            if got is None:
                self._error(f"step {self.step.id!r}: key {key_str(k)} missing in target")
                errors += 1
            elif got != v:
                self._error(f"step {self.step.id!r}: key {key_str(k)} differs in target "
                            f"({len(got)} bytes, expected {len(v)})")
                errors += 1
        return errors

    def _error(self, msg: str) -> None:
        self.res.errors += 1
        self._error_log(msg)

    def _error_log(self, msg: str) -> None:
        if len(self.ctx.error_log) < MAX_ERROR_MESSAGES:
            self.ctx.error_log.append(msg)
            log.warning("%s", msg)

    def _run_validators(self, keys: list[bytes], values: list[bytes]) -> int:
        """Count the records validators reject; they see keys as the target's backend
        stores them (``/NAME`` for ``/blocks/NAME`` on ``kubo:``)."""
        errors = 0
        if not self.xf.validators:
            return 0
        seen = stored_keys(self.dst, keys)
        for v in self.xf.validators:
            for k, sk, val in zip(keys, seen, values):
                reason = v(sk, val)
                if reason:
                    self._error(f"step {self.step.id!r}: validator {v.name} rejected key "
                                f"{key_str(k)}: {reason}")
                    errors += 1
        return errors

    def _validate(self) -> None:
        self.phase = "validate"
        compare = self.step.compare
        if compare is None:
            compare = not self.xf.validators and not self.in_place
        if compare and self.in_place:
            raise MigrationError(f"step {self.step.id!r}: cannot compare a store with itself; "
                                 f"give validators or different source and target")
        if compare:
            errors = self._compare(self.src, self.dst, transform_all=False,
                                   run_validators=True)
        else:
            errors = 0
            for keys, values in self._scan(self.dst, self.filt.start, self.filt.end):
                sk, sv, skipped = self.filt.select(keys, values)
                errors += self._run_validators(sk, sv)
                self.res.records += len(sk)
                self.res.skipped += skipped
                self.res.bytes += sum(map(len, sv))
                self._progress()
        if errors:
            self.res.message = f"{errors} record(s) failed validation"
            raise ValidationError(f"step {self.step.id!r}: {errors} record(s) failed "
                                  f"validation (first: {self._first_error()})")
        self.res.message = f"{self.res.records} record(s) valid"

    def _first_error(self) -> str:
        for line in self.ctx.error_log:
            if f"step {self.step.id!r}" in line:
                return line.split(": ", 1)[-1]
        return "see error log"

    # -- cleanup -----------------------------------------------------------------------------
    def _cleanup(self) -> None:
        self.phase = "cleanup"
        ds = self.dst
        if self.ctx.dry_run:
            for keys in self._scan_keys_range(ds, TMP_ROOT, TMP_END):
                self.res.deleted += len(keys)
        else:
            self.res.deleted += self._clear_range(ds, TMP_ROOT, TMP_END)
        if self.step.filters is not None and not self.step.filters.empty:
            filt = self.filt
            for keys, values in self._scan(ds, filt.start, filt.end):
                sel, _, skipped = filt.select(keys, values)
                self.res.records += len(sel)
                self.res.skipped += skipped
                if sel and not self.ctx.dry_run:
                    with ds.batch() as b:
                        for k in sel:
                            b.delete(k)
                self.res.deleted += len(sel)
                self._progress()
        compacted = False
        if not self.ctx.dry_run:
            ds.sync("/")
            compact = getattr(ds, "compact", None)
            if callable(compact):
                compact()
                compacted = True
            self.ctx.cleanup_requested = True
        self.res.message = (f"removed {self.res.deleted} record(s)"
                            + ("; compacted" if compacted else "")
                            + "; journal removed once the stamp is written")

    def _scan_keys_range(self, ds: Any, start: bytes, end: bytes) -> Iterator[list[bytes]]:
        for keys, _ in ds.scan_key_sizes(start, end, max_records=self.bs):
            yield keys
