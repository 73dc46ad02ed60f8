"""``MigrationManager``: runs a plan against a source and a target, journaled and resumable.

Order of a run: validate the plan; open the stores (read-only in a dry run); stop at once if
the version stamp says this plan already ran; read the journal (resume or refuse); journal
``begin``; archive the source if ``backup_before``; run the steps, each checkpointing; write
the stamp; journal ``done``; drop the journal if a cleanup step asked for it. On a failure
the rollback runs (the plan's rollback steps, else the pre-migration archive) and the result
says exactly what it reverted. See docs/MIGRATION.md.

The pieces: preflight.py (plan, state files, stamp check, locks), stores.py (the run's
stores), backup_before.py, steps.py (the step loop; engine.py runs one step), rollback.py,
metrics.py.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.engine.targetdir import refuse_foreign_directory
from dsbackup.errors import (
    EXIT_ERROR,
    EXIT_WARNING,
    Cancelled,
    ConfigError,
    DatastoreError,
    DsBackupError,
    MigrationError,
)
from dsbackup.migration.backup_before import backup_before
from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.journal import Journal, JournalState, read_stamp, write_stamp
from dsbackup.migration.kuborepo import KuboRun
from dsbackup.migration.metrics import MigrationMetrics
from dsbackup.migration.plan import SOURCE, TARGET, MigrationPlan
from dsbackup.migration.preflight import (
    already_done,
    kubo_run,
    load,
    lock_stores,
    refuse_foreign_files,
    refuse_overlap,
    refuse_unread_source,
    state_files,
    writes_source,
)
from dsbackup.migration.result import MigrationResult, RollbackReport, StepResult
from dsbackup.migration.rollback import rollback
from dsbackup.migration.runtime import ProgressEvent
from dsbackup.migration.steps import run_steps
from dsbackup.migration.stores import RunStores, StoreLike, store_path

__all__ = ["MigrationManager"]

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class MigrationManager:
    """Runs migration plans. ``get_metrics()`` sums up the runs of this manager."""

    def __init__(self, config: MigrationConfig | None = None) -> None:
        self.config = config or MigrationConfig()
        self._metrics = MigrationMetrics()

    # -- public API --------------------------------------------------------------------------
    def execute_migration(self, plan: MigrationPlan | str | os.PathLike[str],
                          source: StoreLike, target: StoreLike, *,
                          progress: Callable[[ProgressEvent], None] | None = None,
                          cancel: threading.Event | None = None) -> MigrationResult:
        """Run ``plan`` from ``source`` to ``target`` (URIs or opened datastores).

        Raises :class:`ConfigError` for an invalid plan or configuration and
        :class:`MigrationError` (e.g. ``JournalCorrupt``) when it refuses to start; once steps
        run, failures are reported in the returned result (``success`` false, ``error``,
        ``exit_code``, ``rollback``), not raised.
        """
        plan = load(plan)
        cfg = self.config.with_overrides(plan.config)
        refuse_unread_source(plan, source, target)
        refuse_overlap(plan, source, target)
        result = MigrationResult(plan.id, plan.version, _now(), dry_run=cfg.dry_run)
        kubo = kubo_run(plan, cfg, source, target)
        if not cfg.dry_run and already_done(plan, cfg, target, result):
            if kubo is not None:
                kubo.check_still_migrated(result.stamp_path)
            result.finished_at = _now()
            self._metrics.record(result)
            return result
        if kubo is not None:  # before any store is opened: refuse a repo at another version
            journal, _ = state_files(plan, cfg, target)
            kubo.preflight(started=journal is not None and journal.read().started,
                           dry_run=cfg.dry_run)
        if not cfg.dry_run:
            # lmdb:~ by mistake: not among someone's files (a --state-dir inside is ours)
            refuse_foreign_directory(target, cfg.state_dir, doing="migrate")
        locks = ExitStack() if cfg.dry_run else lock_stores(plan, cfg, source, target)
        stores = RunStores(readonly=cfg.dry_run)
        undo_new_repo = False
        try:
            if kubo is not None and not cfg.dry_run:
                kubo.make_new_repo()  # a new kubo: target: the source repo's files, locked
            src = stores.add(SOURCE, source, must_exist=True,
                             readonly=not writes_source(plan, cfg, source, target))
            refuse_foreign_files(plan, stores.by_name, SOURCE)  # records no scan would list
            dst = stores.add(TARGET, target, must_exist=False)
            refuse_foreign_files(plan, stores.by_name, TARGET)
            if cfg.dry_run:
                run_steps(plan, cfg, stores, result, None, JournalState(), progress, cancel)
                result.success = result.error is None
                result.message = "dry run: nothing was written"
            else:
                self._execute(plan, cfg, stores, src, dst, result, progress, cancel, kubo)
        except BaseException:
            # refused before the journal began (the source's daemon running, a store that
            # does not open): a new repo this run made is taken back, or every later run
            # would refuse it as an existing repo at the old version
            if kubo is not None and not cfg.dry_run:
                try:
                    journal, _ = state_files(plan, cfg, target)
                    undo_new_repo = not (journal is not None and journal.read().started)
                except Exception:  # noqa: BLE001 - a journal we cannot read: keep everything
                    undo_new_repo = False
            raise
        finally:
            stores.close()
            if undo_new_repo:
                try:
                    kubo.undo_new_repo()  # type: ignore[union-attr]
                except OSError as exc:  # the refusal is the news; this is said beside it
                    log.warning("could not remove the new Kubo repo %s: %s",
                                kubo.target_repo, exc)  # type: ignore[union-attr]
            locks.close()
            result.finished_at = result.finished_at or _now()
            self._metrics.record(result)
        return result

    def rollback_migration(self, plan: MigrationPlan | str | os.PathLike[str],
                           source: StoreLike, target: StoreLike) -> MigrationResult:
        """Undo a migration (finished or not): remove its stamp, run the plan's rollback
        steps or restore its pre-migration archive, and retire its journal."""
        plan = load(plan)
        cfg = self.config.with_overrides(plan.config)
        if cfg.dry_run:
            raise ConfigError("a rollback cannot be a dry run")
        result = MigrationResult(plan.id, plan.version, _now())
        kubo = kubo_run(plan, cfg, source, target)
        locks = lock_stores(plan, cfg, source, target, rollback=True)
        stores = RunStores(readonly=False)
        try:
            stores.add(SOURCE, source, must_exist=True)
            dst = stores.add(TARGET, target, must_exist=False)
            journal, stamp_path = state_files(plan, cfg, dst)
            state = journal.read() if journal else JournalState()
            stamp = read_stamp(stamp_path) if stamp_path else None
            backup = state.backup_path or (stamp or {}).get("backup_path")
            result.backup_path = backup
            report = rollback(plan, cfg, stores, result, journal, stamp_path, backup,
                              kubo=kubo)
            result.rollback = report
            result.success = report.success and report.performed
            if not report.success:
                result.error = result.error or "RollbackFailed"
                result.exit_code = result.exit_code or EXIT_ERROR
            elif not report.performed:
                # no data was reverted (at most our stamp removed): a warning, never "ok"
                result.error = "NothingToRollBack"
                result.exit_code = EXIT_WARNING
                result.message = f"nothing to roll back: {report.message}"
                result.error_log.append(report.message)
        finally:
            stores.close()
            locks.close()
            result.finished_at = _now()
            self._metrics.record(result)
        return result

    def get_metrics(self) -> dict[str, Any]:
        return self._metrics.snapshot()

    # -- internals ---------------------------------------------------------------------------
    def _execute(self, plan: MigrationPlan, cfg: MigrationConfig, stores: RunStores, src: Any,
                 dst: Any, result: MigrationResult,
                 progress: Callable[[ProgressEvent], None] | None,
                 cancel: threading.Event | None, kubo: KuboRun | None = None) -> None:
        journal, stamp_path = state_files(plan, cfg, dst)
        digest = plan.digest()
        if journal is not None:
            result.journal_path = str(journal.path)
            result.stamp_path = str(stamp_path)
        if already_done(plan, cfg, dst, result):
            return
        state = journal.read() if journal is not None else JournalState()
        if state.started:
            begin = state.begin or {}
            if state.done:
                raise MigrationError(
                    f"journal {journal.path if journal else ''} says the migration finished "
                    f"but its version stamp is missing (an interrupted rollback?); run "
                    f"--rollback again")
            if begin.get("digest") != digest:
                raise MigrationError(
                    f"journal {journal.path if journal else ''} belongs to a different plan "
                    f"(digest {str(begin.get('digest'))[:12]}, this plan "
                    f"{digest[:12]}); roll it back or remove the journal")
            if not cfg.resume:
                cp = state.checkpoint or {}
                # between checkpoints (killed early, or after a step ended) it said
                # 'step ?, phase ?'
                where = (f"step {cp['id']}, phase {cp.get('phase', '?')}" if cp.get("id")
                         else f"{len(state.steps_done)} of {len(plan.steps)} steps done")
                raise MigrationError(
                    f"an unfinished migration of plan {plan.id!r} exists (journal "
                    f"{journal.path if journal else ''}, {where}); re-run with --resume to "
                    f"continue or --rollback to undo it")
            result.resumed = True
        if journal is not None:
            journal.open()
            if not state.started:
                journal.append({"t": "begin", "plan": plan.id, "version": plan.version,
                                "digest": digest, "source": getattr(src, "uri", None),
                                "target": getattr(dst, "uri", None),
                                "ts": _now().isoformat()})
        result.steps = [StepResult(s.id, s.kind.value) for s in plan.steps]
        try:
            try:
                if cfg.backup_before:
                    result.backup_path = backup_before(plan, cfg, src, journal, state,
                                                       stores.by_name)
                ctx = run_steps(plan, cfg, stores, result, journal, state, progress,
                                cancel, kubo)
                if kubo is not None:  # Kubo's version file: after every step succeeded
                    written = kubo.finish()
                    if written is not None:
                        result.message = f"{written} is now {kubo.spec.to_version}"
                if stamp_path is not None:
                    write_stamp(stamp_path, {
                        "plan_id": plan.id, "version": plan.version, "digest": digest,
                        "completed_at": _now().isoformat(), "backup_path": result.backup_path,
                        "source": getattr(src, "uri", None), "target": getattr(dst, "uri", None),
                    })
                if journal is not None:
                    journal.append({"t": "done"})
                    if ctx.cleanup_requested:
                        journal.remove()
                        result.journal_path = None
                result.success = True
            except (Cancelled, KeyboardInterrupt) as exc:
                result.error = type(exc).__name__
                result.exit_code = getattr(exc, "exit_code", 130)
                result.error_log.append(str(exc) or "interrupted")
                if isinstance(exc, KeyboardInterrupt):
                    raise
            except DsBackupError as exc:
                self._fail(plan, cfg, stores, result, journal, stamp_path, exc, kubo)
            except Exception as exc:  # noqa: BLE001 - reported in the result, then rolled back
                # the report names it in one line; the traceback only with -v (EXIT_CODES.md)
                log.info("migration step crashed", exc_info=True)
                self._fail(plan, cfg, stores, result, journal, stamp_path, exc, kubo)
        finally:
            if journal is not None:
                journal.close()

    def _fail(self, plan: MigrationPlan, cfg: MigrationConfig, stores: RunStores,
              result: MigrationResult, journal: Journal | None, stamp_path: Path | None,
              exc: BaseException, kubo: KuboRun | None = None) -> None:
        if stamp_path is not None and not stamp_path.exists():
            result.stamp_path = None  # never name a stamp that was not written
        if isinstance(exc, OSError) and is_no_space(exc):
            # one line naming the filesystem, as a restore's (was '[Errno 28] No space ...')
            where = store_path(stores.by_name.get(TARGET)) or (
                stamp_path.parent if stamp_path is not None else Path.cwd())
            exc = DatastoreError(no_space_message(
                where, what="free some space and rerun the migration"))
        result.error = type(exc).__name__
        result.exit_code = getattr(exc, "exit_code", EXIT_ERROR)
        result.error_log.append(f"{type(exc).__name__}: {exc}")
        if journal is not None:
            journal.append({"t": "failed", "error": f"{type(exc).__name__}: {exc}"})
        if not any(st.status != "not_run" for st in result.steps):
            # e.g. the pre-migration backup failed: no step touched anything
            result.rollback = RollbackReport(message="no step ran: nothing to roll back")
            if journal is not None:
                journal.retire("failed")
                result.journal_path = None
        elif cfg.rollback_on_failure:
            ran = {i for i, st in enumerate(result.steps) if st.status != "not_run"}
            result.rollback = rollback(
                plan, cfg, stores, result, journal, stamp_path, result.backup_path, ran,
                reverted=getattr(exc, "dsmigrate_reverted", None),
                partial=bool(getattr(exc, "dsmigrate_partial", False)), kubo=kubo)
