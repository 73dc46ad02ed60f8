"""Rollback of a migration: the plan's rollback steps, Kubo's revert log, or the source
restored from its pre-migration archive (deep-verified first, restored beside the source and
swapped in only once complete). The version stamp and journal are retired only when the
rollback succeeded."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dsbackup.datastores import parse_uri
from dsbackup.errors import EXIT_ERROR, IntegrityError, MigrationError
from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.journal import Journal, remove_stamp
from dsbackup.migration.kuborepo import KuboRun
from dsbackup.migration.plan import SOURCE, TARGET, MigrationPlan
from dsbackup.migration.result import MigrationResult, RollbackReport
from dsbackup.migration.runtime import RunContext
from dsbackup.migration.steps import StepFailed, run_step
from dsbackup.migration.stores import (
    STAGEABLE,
    RunStores,
    refs_written,
    remove_path,
    store_path,
)

__all__ = ["restore_source", "rollback"]

log = logging.getLogger(__name__)


def rollback(plan: MigrationPlan, cfg: MigrationConfig, stores: RunStores,
             result: MigrationResult, journal: Journal | None, stamp_path: Path | None,
             backup: str | None, ran: set[int] | None = None, *,
             reverted: str | None = None, partial: bool = False,
             kubo: KuboRun | None = None) -> RollbackReport:
    """Undo what the steps in ``ran`` (all of the plan's when None) may have written.
    The version stamp and the journal are retired only when the rollback succeeded: a
    failed one leaves everything as it was, to be retried. ``reverted``: what the failed
    step undid itself; ``partial``: the failed step left a half-done in-place state
    (temp keys) that only ``--resume`` can finish — when nothing else reverts it, the
    journal is kept for that."""
    report = RollbackReport()
    steps = [s for i, s in enumerate(plan.steps) if ran is None or i in ran]
    rb_cfg = cfg.with_overrides({"dry_run": False})
    ctx = RunContext(rb_cfg, journal=None, steps_total=len(plan.rollback),
                     error_log=result.error_log)
    try:
        if kubo is not None and kubo.can_revert():
            report.method = "revert_log"
            rev, report.message = kubo.revert(stores.by_name[TARGET])
            report.restored_records = rev.restored
            report.restored_from = str(kubo.log.path) if kubo.log else None
            report.performed = True
        elif plan.rollback:
            report.method = "steps"
            for i, step in enumerate(plan.rollback):
                try:
                    res = run_step(ctx, step, i, f"R{i}", stores, None)
                except StepFailed as failed:
                    report.steps.append(failed.result)
                    raise failed.cause from None
                report.steps.append(res)
            report.performed = True
            report.message = (f"ran {len(report.steps)} rollback step(s): "
                              + ", ".join(f"{s.step_id} ({s.type}: {s.written} written, "
                                          f"{s.deleted} deleted)" for s in report.steps))
        elif backup and not stores.is_written(SOURCE, refs_written(steps)):
            # e.g. a copy step: it only read the source, so there is nothing to undo
            # there (and restoring the archive would only lose later writes)
            report.message = ("no step modified the source: source left as it was "
                              "(the pre-migration archive was not needed); target left "
                              "as is")
        elif backup:
            report.method = "backup"
            report.restored_from = backup
            report.restored_records = restore_source(backup, stores)
            report.performed = True
            report.message = (f"restored the source from {backup} "
                              f"({report.restored_records} records); target left as is")
        else:
            report.message = ("no rollback steps, no pre-migration backup"
                              + (" and no revert log" if kubo is not None else "")
                              + ": nothing reverted")
        if reverted and not report.performed:
            report.message = (f"the failed step reverted itself ({reverted}); "
                              + report.message.replace("nothing reverted",
                                                       "nothing else reverted"))
        if report.performed and kubo is not None and report.method != "revert_log" \
                and kubo.restore_version():
            report.message += f"; Kubo repo version back at {kubo.spec.from_version}"
    except BaseException as exc:
        report.success = False
        report.message = f"rollback failed: {type(exc).__name__}: {exc}"
        result.error_log.append(report.message)
        result.exit_code = result.exit_code or getattr(exc, "exit_code", EXIT_ERROR)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return report
    if partial and not report.performed:
        report.message += ("; the failed step was replacing records in place: its "
                           "journal is kept, fix the cause and re-run with --resume to "
                           "finish it")
        if journal is not None and journal.exists:
            journal.append({"t": "rolled_back", "method": "none",
                            "message": report.message})
        log.warning("rollback: %s", report.message)
        return report
    if stamp_path is not None:
        report.stamp_removed = remove_stamp(stamp_path)
        if report.stamp_removed and not report.performed:
            report.message += "; version stamp removed"
    if journal is not None:
        if journal.exists:
            journal.append({"t": "rolled_back", "method": report.method,
                            "message": report.message})
        journal.retire("rolled-back")
        result.journal_path = None
    log.warning("rollback: %s", report.message)
    return report


def restore_source(backup: str, stores: RunStores) -> int:
    """Restore the source from its pre-migration archive. The archive is verified
    completely (deep) first; then restored into a staging store beside the source and
    swapped in only once that succeeded, so a failure at any point leaves the source
    exactly as it was. Stores that cannot be staged (no single path of a known layout,
    or not opened by this run) are emptied and restored in place, after the same
    verification."""
    from dsbackup.archive.verify import verify_archive

    left = "the source was left as it is"
    archive = Path(backup)
    if not archive.is_file():
        raise MigrationError(f"pre-migration archive {backup} is missing; {left}")
    check = verify_archive(archive, deep=True)
    if not check.ok:
        first = check.errors[0] if check.errors else "damaged"
        raise IntegrityError(f"pre-migration archive {backup} failed verification "
                             f"({first}); {left}")
    src = stores.by_name[SOURCE]
    path = store_path(src)
    if path is not None and getattr(src, "scheme", "") in STAGEABLE and stores.owns(src):
        return _restore_staged(archive, stores, src, path)
    return _restore_in_place(archive, src)


def _restore_staged(archive: Path, stores: RunStores, src: Any, path: Path) -> int:
    from dsbackup.engine.restore import restore_archive

    scheme, _loc, params = parse_uri(stores.uri_of(src))
    params = dict(params)
    shard = getattr(src, "shard", None)
    if scheme == "flatfs" and shard is not None:
        params["shard"] = f"{shard.kind}/{shard.param}"  # the source's layout
    staging = path.with_name(f".{path.name}.dsmigrate-rollback-{os.getpid()}")
    sides = [staging.with_name(staging.name + s) for s in ("", "-wal", "-shm")]
    for p in sides:
        remove_path(p)
    uri = f"{scheme}:{staging}" + (f"?{urlencode(params)}" if params else "")
    try:
        res = restore_archive(archive, uri)
        stores.swap_in(src, staging)
    except BaseException:
        for p in sides:
            remove_path(p)
        raise
    return int(res.records_written)


def _restore_in_place(archive: Path, source: Any) -> int:
    from dsbackup.engine.restore import restore_archive

    # the source must end up exactly as archived: empty it, then restore into it
    while True:
        keys: list[bytes] = []
        for ks, _ in source.scan_key_sizes(b"", None, max_records=10_000):
            keys = ks
            break
        if not keys:
            break
        with source.batch() as b:
            for k in keys:
                b.delete(k)
    res = restore_archive(archive, source)
    source.sync("/")
    return int(res.records_written)
