"""Validate steps and a copy's verification: every selected source record, transformed, is
in the target with the same value; validators run over the records as the target stores
them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dsbackup.errors import MigrationError, NotFound, ValidationError
from dsbackup.keys import key_str
from dsbackup.migration.runtime import after, stored_keys

if TYPE_CHECKING:
    from dsbackup.migration.engine import StepRunner

# backends where a short range scan is cheap (a seek); others (flatfs lists its shard
# directories for any range) are compared key by key with get()
_RANGE_SCANS = {"lmdb", "leveldb", "sqlite", "memory"}


def compare(r: StepRunner, src: Any, dst: Any, transform_all: bool,
            run_validators: bool) -> int:
    """Every selected source record, transformed, is in ``dst`` with the same value.
    Returns the number of records that are missing or differ."""
    filt = r.filt
    start, end = (b"", None) if transform_all else (filt.start, filt.end)
    errors = 0
    for keys, values in r.scan(src, start, end):
        if transform_all and not (filt.keep is None and filt.start == b""
                                  and filt.end is None):
            ek, ev, _, _ = r.split_transform(keys, values)
            sel = len(keys)
        else:
            sk, sv, _ = filt.select(keys, values)
            ek, ev = r.apply(sk, sv)
            sel = len(sk)
        if run_validators:
            errors += _run_validators(r, ek, ev)
            r.res.records += sel
            r.res.bytes += sum(map(len, ev))
        if not ek:
            continue
        errors += _compare_batch(r, dst, ek, ev)
        r.progress()
    return errors


def _compare_batch(r: StepRunner, dst: Any, ek: list[bytes], ev: list[bytes]) -> int:
    if r.xf.key.identity and getattr(dst, "scheme", "") in _RANGE_SCANS:
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
        return _diff(r, ek, ev, got.get)
    # keys in any order: later source records win, as when they were written
    expected = dict(zip(ek, ev))

    def lookup(k: bytes) -> bytes | None:
        try:
            return dst.get(k)
        except NotFound:
            return None
    return _diff(r, list(expected), list(expected.values()), lookup)


def _diff(r: StepRunner, ek: list[bytes], ev: list[bytes], lookup: Callable[[bytes], Any]) -> int:
    errors = 0
    for k, v in zip(ek, ev):
        got = lookup(k)
        if got is None:
            r.error(f"step {r.step.id!r}: key {key_str(k)} missing in target")
            errors += 1
        elif got != v:
            r.error(f"step {r.step.id!r}: key {key_str(k)} differs in target "
                    f"({len(got)} bytes, expected {len(v)})")
            errors += 1
    return errors


def _run_validators(r: StepRunner, keys: list[bytes], values: list[bytes]) -> int:
    """Count the records validators reject; they see keys as the target's backend
    stores them (``/NAME`` for ``/blocks/NAME`` on ``kubo:``)."""
    errors = 0
    if not r.xf.validators:
        return 0
    seen = stored_keys(r.dst, keys)
    for v in r.xf.validators:
        for k, sk, val in zip(keys, seen, values):
            reason = v(sk, val)
            if reason:
                r.error(f"step {r.step.id!r}: validator {v.name} rejected key "
                        f"{key_str(k)}: {reason}")
                errors += 1
    return errors


def validate(r: StepRunner) -> None:
    """A validate step: compare against the source and/or run the validators; raises
    ValidationError when records fail."""
    r.phase = "validate"
    against_source = r.step.compare
    if against_source is None:
        against_source = not r.xf.validators and not r.in_place
    if against_source and r.in_place:
        raise MigrationError(f"step {r.step.id!r}: cannot compare a store with itself; "
                             f"give validators or different source and target")
    if against_source:
        errors = compare(r, r.src, r.dst, transform_all=False, run_validators=True)
    else:
        errors = 0
        for keys, values in r.scan(r.dst, r.filt.start, r.filt.end):
            sk, sv, skipped = r.filt.select(keys, values)
            errors += _run_validators(r, sk, sv)
            r.res.records += len(sk)
            r.res.skipped += skipped
            r.res.bytes += sum(map(len, sv))
            r.progress()
    if errors:
        r.res.message = f"{errors} record(s) failed validation"
        raise ValidationError(f"step {r.step.id!r}: {errors} record(s) failed "
                              f"validation (first: {_first_error(r)})")
    r.res.message = f"{r.res.records} record(s) valid"


def _first_error(r: StepRunner) -> str:
    for line in r.ctx.error_log:
        if f"step {r.step.id!r}" in line:
            return line.split(": ", 1)[-1]
    return "see error log"
