"""Copy, move and transform between two stores: the copy phase (native LMDB to LMDB when
nothing is filtered or transformed), the verification against the source, and a move's
deletion of the source records. In place (one store), the step goes to step_inplace.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.errors import DatastoreError, ValidationError
from dsbackup.keys import key_str
from dsbackup.migration import lmdbfast
from dsbackup.migration.runtime import after, scan_ranges
from dsbackup.migration.step_inplace import in_place
from dsbackup.migration.step_validate import compare

if TYPE_CHECKING:
    from dsbackup.migration.engine import StepRunner


def copy_like(r: StepRunner, *, transform_all: bool, delete_source: bool) -> None:
    """A copy (``transform_all`` false) or transform into the target, then the
    verification, then for a move (``delete_source``) the source records' deletion."""
    if r.in_place:
        in_place(r, delete_old=transform_all)
        return
    order = ["copy", "verify", "delete"]
    if not r.phase_done_before("copy", order):
        r.phase = "copy"
        _copy_phase(r, transform_all)
        r.phase = "verify"
        r.checkpoint(None, (r.dst,), force=True)
    if r.ctx.config.verify_migration and not r.phase_done_before("verify", order):
        r.phase = "verify"
        if not r.ctx.dry_run:
            errors = _native_verify(r, transform_all)
            if errors is None:
                errors = compare(r, r.src, r.dst, transform_all, run_validators=False)
            if errors:
                raise ValidationError(f"step {r.step.id!r}: verification failed: "
                                      f"{errors} record(s) differ between "
                                      f"{r.src.uri} and {r.dst.uri}")
    if delete_source:
        r.phase = "delete"
        r.checkpoint(r.resume_point("delete"), (r.dst,), force=True)
        _delete_phase(r)
        if not r.ctx.dry_run:
            r.src.sync("/")
        r.res.deleted = r.res.records  # exactly the records the copy selected


def _copy_phase(r: StepRunner, transform_all: bool) -> None:
    filt, xf, dst = r.filt, r.xf, r.dst
    resume = r.resume_point("copy")
    whole = transform_all and filt.keep is None and filt.start == b"" and filt.end is None
    start, end = (b"", None) if transform_all else (filt.start, filt.end)
    if resume is not None:
        start = after(resume)
    pass_through = xf.identity and not xf.validators and filt.keep is None
    res = r.res
    if pass_through and not r.ctx.dry_run and lmdbfast.applicable(r.src, dst):
        if _native_copy(r, start, end):
            return
        for s, e in scan_ranges(start, end):
            for last, n, nbytes in lmdbfast.copy_batches(r.src, dst, s, e, r.bs):
                res.records += n
                res.written += n
                res.bytes += nbytes
                r.checkpoint(last, (dst,))
                r.progress()
        return
    for keys, values in r.scan(r.src, start, end):
        last = keys[-1]
        if transform_all and not whole:
            out_k, out_v, n_sel, changed = r.split_transform(keys, values)
            res.records += n_sel
            res.skipped += len(keys) - n_sel
            res.changed += changed
        else:
            if pass_through:
                out_k, out_v, skipped = keys, values, 0
                res.records += len(keys)
                if r.ctx.dry_run:
                    r.sample(keys, values, keys, values, "copy")
            else:
                sel_k, sel_v, skipped = filt.select(keys, values)
                out_k, out_v = r.apply(sel_k, sel_v)
                xf.check(out_k, out_v, r.step.id, dst)
                res.records += len(sel_k)
                res.changed += r.changed(sel_k, sel_v, out_k, out_v)
                r.sample(sel_k, sel_v, out_k, out_v, "copy")
            res.skipped += skipped
        if out_k:
            if not r.ctx.dry_run:
                dst.put_many(out_k, out_v)
            res.written += len(out_k)
            res.bytes += sum(map(len, out_v))
        r.checkpoint(last, (dst,))
        r.progress()


def _native_verify(r: StepRunner, transform_all: bool) -> int | None:
    """The post-copy comparison with liblmdb when the copy could go native; ``None``
    when it cannot (then the Python comparison runs)."""
    filt, xf = r.filt, r.xf
    lend = r.ctx.exclusive
    if (lend is None or not lmdbfast.native_available() or transform_all
            or not (xf.identity and not xf.validators and filt.keep is None)
            or not lmdbfast.applicable(r.src, r.dst)):
        return None
    src_path, dst_path = str(r.src.path), str(r.dst.path)
    try:
        holder = lend(r.src, r.dst)
    except ValueError:
        return None
    errors = 0
    with holder:
        for s, e in scan_ranges(filt.start, filt.end):
            r.ctx.check()
            n, _nbytes, bad, key, kind = lmdbfast.native_compare(src_path, dst_path, s, e)
            if bad:
                errors += bad
                r.res.errors += bad
                r.error_log(f"step {r.step.id!r}: key {key_str(key)} "
                            f"{'missing in' if kind == 'missing' else 'differs in'} "
                            f"target (first of {bad})")
    r.src, r.dst = holder.stores
    return errors


def _native_copy(r: StepRunner, start: bytes, end: bytes | None) -> bool:
    """Copy with liblmdb (GIL released) while the run lends both stores; False when that
    is not possible (stores not ours to close, module not built)."""
    lend = r.ctx.exclusive
    if lend is None or not lmdbfast.native_available():
        return False
    res = r.res
    src_path, dst_path = str(r.src.path), str(r.dst.path)
    try:
        holder = lend(r.src, r.dst)
    except ValueError:
        return False
    with holder:
        for s, e in scan_ranges(start, end):
            with lmdbfast.native_copier(src_path, dst_path, s, e) as copier:
                target = lmdbfast.NativeTarget(copier)
                while True:
                    try:
                        last, n, nbytes = copier.copy(r.bs, r.bb)
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
                    r.checkpoint(last, (target,))
                    r.progress()
                copier.sync()
    r.src, r.dst = holder.stores
    return True


def _delete_phase(r: StepRunner) -> None:
    """Move, second half: remove the moved records from the source (copy is durable)."""
    filt = r.filt
    start = filt.start
    resume = r.resume_point("delete")
    if resume is not None:
        start = after(resume)
    if filt.keep is None:
        batches: Iterator[tuple[list[bytes], list[bytes] | None]] = (
            (ks, None) for ks in r.scan_keys(r.src, start, filt.end))
    else:
        batches = r.scan(r.src, start, filt.end)
    for keys, values in batches:
        sel = keys if values is None else filt.select(keys, values)[0]
        if sel and not r.ctx.dry_run:
            with r.src.batch() as b:
                for k in sel:
                    b.delete(k)
        r.checkpoint(keys[-1], (r.src,))
        r.progress()
