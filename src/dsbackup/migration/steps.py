"""The step loop of a run: each step of a plan in order through a :class:`StepRunner`, the
steps an interrupted run completed skipped, each completed step journaled; a dry run
evaluates every step on the stores as they are."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dsbackup.errors import EXIT_ERROR, DsBackupError
from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.engine import StepRunner
from dsbackup.migration.journal import Journal, JournalState
from dsbackup.migration.kuborepo import KuboRun
from dsbackup.migration.plan import MigrationPlan, MigrationStep, MigrationType
from dsbackup.migration.result import MigrationResult, StepResult
from dsbackup.migration.runtime import ProgressEvent, RunContext
from dsbackup.migration.stores import RunStores

__all__ = ["StepFailed", "add_step_counts", "run_step", "run_steps"]

log = logging.getLogger(__name__)


class StepFailed(Exception):
    """Carries the failed step's partial result up to the run loop (never escapes it)."""

    def __init__(self, result: StepResult, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.result = result
        self.cause = cause
        self.exit_code = getattr(cause, "exit_code", EXIT_ERROR)


def run_steps(plan: MigrationPlan, cfg: MigrationConfig, stores: RunStores,
              result: MigrationResult, journal: Journal | None, state: JournalState,
              progress: Callable[[ProgressEvent], None] | None,
              cancel: threading.Event | None, kubo: KuboRun | None = None) -> RunContext:
    """Run the plan's steps into ``result.steps``; the first failure is raised (its partial
    result recorded). Returns the run's context (``cleanup_requested``)."""
    deadline = time.monotonic() + cfg.timeout if cfg.timeout else None
    ctx = RunContext(cfg, dry_run=cfg.dry_run, journal=journal, progress=progress,
                     cancel=cancel, deadline=deadline, steps_total=len(plan.steps),
                     error_log=result.error_log,
                     exclusive=None if cfg.dry_run else stores.exclusive)
    result.steps = [StepResult(s.id, s.kind.value) for s in plan.steps]
    written_refs: set[str] = set()  # dry run: stores an earlier step would have written
    for i, step in enumerate(plan.steps):
        if ctx.dry_run:
            _dry_run_step(ctx, step, i, stores, result, written_refs)
            continue
        done = state.steps_done.get(i)
        if done is not None:
            res = StepResult.from_dict(done.get("result", {}))
            res.status = "completed"
            res.resumed = True
            res.message = (res.message + "; " if res.message else "") + \
                "completed by an earlier, interrupted run"
            result.steps[i] = res
            add_step_counts(result, res)
            if step.kind is MigrationType.CLEANUP:
                ctx.cleanup_requested = True
            continue
        cp = state.checkpoint if state.checkpoint and state.checkpoint.get("step") == i \
            else None
        if kubo is not None:  # Kubo's revert log, complete before the step writes
            kubo.before_step(step, stores.resolve(step.source),
                             stores.resolve(step.target), cfg.batch_size)
        try:
            res = run_step(ctx, step, i, f"S{i}", stores, cp)
        except StepFailed as failed:
            result.steps[i] = failed.result
            raise failed.cause from None
        result.steps[i] = res
        add_step_counts(result, res)
        if journal is not None:
            journal.append({"t": "step_done", "step": i, "id": step.id,
                            "result": {k: v for k, v in res.to_dict().items()
                                       if k != "sample"}})
    return ctx


def _dry_run_step(ctx: RunContext, step: MigrationStep, i: int, stores: RunStores,
                  result: MigrationResult, written_refs: set[str]) -> None:
    """A dry run evaluates each step on the stores as they are now; earlier steps'
    writes are not simulated, so a comparison against a store they write is skipped."""
    reads_written = step.source in written_refs or (
        step.kind is MigrationType.VALIDATE and step.target in written_refs)
    if step.kind is not MigrationType.VALIDATE:
        written_refs.add(step.target)
        if step.kind is MigrationType.MOVE:
            written_refs.add(step.source)
    if reads_written and step.kind is MigrationType.VALIDATE:
        result.steps[i] = StepResult(step.id, step.kind.value, status="skipped",
                                     message="dry run: not evaluated, an earlier step "
                                             "writes the store it checks")
        return
    try:
        res = run_step(ctx, step, i, f"S{i}", stores, None)
    except StepFailed as failed:
        res = failed.result
        result.error = result.error or type(failed.cause).__name__
        result.exit_code = result.exit_code or failed.exit_code
        result.error_log.append(f"{step.id}: {failed.cause}")
        if not isinstance(failed.cause, DsBackupError):
            raise failed.cause from None
    if reads_written:
        res.message = ((res.message + "; ") if res.message else "") + \
            "dry run: evaluated on the store as it is now, before earlier steps' writes"
    result.steps[i] = res
    add_step_counts(result, res)


def run_step(ctx: RunContext, step: MigrationStep, index: int, tag: str,
             stores: RunStores, cp: dict[str, Any] | None) -> StepResult:
    """One step (``tag`` names its temp namespace: ``S3``, ``R0``), from checkpoint ``cp``
    when resuming; a failure is raised as :class:`StepFailed` with the partial result."""
    src = stores.resolve(step.source)
    dst = stores.resolve(step.target)
    runner = StepRunner(ctx, step, index, tag, src, dst, cp)
    log.info("step %s (%s): %s -> %s%s", step.id, step.kind.value,
             getattr(src, "uri", "?"), getattr(dst, "uri", "?"),
             " (resumed)" if cp else "")
    try:
        return runner.run()
    except BaseException as exc:
        runner.res.status = "failed"
        reverted = getattr(exc, "dsmigrate_reverted", None)
        runner.res.message = str(exc) + (f"; {reverted}" if reverted else "")
        raise StepFailed(runner.res, exc) from exc


def add_step_counts(result: MigrationResult, res: StepResult) -> None:
    """Add a step's counts to the run's ``total_*`` statistics."""
    st = result.statistics
    for k, v in res.counts().items():
        st[f"total_{k}"] = st.get(f"total_{k}", 0) + v
    st["steps_completed"] = st.get("steps_completed", 0) + (1 if res.success else 0)
