"""Results of a migration run: per step, the rollback, and the whole plan.

``MigrationResult.to_dict()`` is the machine output of ``dsbackup migrate --json``; its
shape is versioned by ``schema`` (currently 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["MigrationResult", "RollbackReport", "StepResult", "RESULT_SCHEMA"]

RESULT_SCHEMA = 1


@dataclass
class StepResult:
    """What one step did (or, in a dry run, would do).

    ``records``: records the step handled (passed its filters); ``bytes``: their value bytes
    as written; ``written``/``deleted``: records put into / removed from a store;
    ``changed``: records whose key or value the transforms changed; ``skipped``: records the
    filters left out; ``errors``: records that failed a validator or comparison.
    ``status``: ``completed``, ``failed``, ``dry_run``, ``skipped`` (already done earlier,
    e.g. by a run that was then interrupted) or ``not_run``.
    """

    step_id: str
    type: str
    status: str = "not_run"
    records: int = 0
    bytes: int = 0
    written: int = 0
    deleted: int = 0
    changed: int = 0
    skipped: int = 0
    errors: int = 0
    message: str = ""
    duration_s: float = 0.0
    resumed: bool = False
    sample: list[dict[str, Any]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.status in ("completed", "dry_run", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("records", "bytes", "written", "deleted",
                                              "changed", "skipped", "errors")}


@dataclass
class RollbackReport:
    """What a rollback reverted. ``method``: ``steps`` (the plan's rollback steps),
    ``backup`` (the pre-migration archive restored into the source) or ``none``."""

    method: str = "none"
    performed: bool = False
    success: bool = True
    steps: list[StepResult] = field(default_factory=list)
    restored_from: str | None = None
    restored_records: int = 0
    stamp_removed: bool = False
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


@dataclass
class MigrationResult:
    plan_id: str
    plan_version: str
    started_at: datetime
    finished_at: datetime | None = None
    success: bool = False
    dry_run: bool = False
    resumed: bool = False
    already_completed: bool = False
    steps: list[StepResult] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    error_log: list[str] = field(default_factory=list)
    message: str = ""
    error: str | None = None
    exit_code: int = 0
    backup_path: str | None = None
    journal_path: str | None = None
    stamp_path: str | None = None
    rollback: RollbackReport | None = None

    @property
    def duration_s(self) -> float:
        if self.finished_at is None:
            return 0.0
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def step_results(self) -> list[StepResult]:
        return self.steps

    @property
    def rolled_back(self) -> bool:
        return self.rollback is not None and self.rollback.performed

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "ok": self.success,
            "plan_id": self.plan_id,
            "plan_version": self.plan_version,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": round(self.duration_s, 6),
            "dry_run": self.dry_run,
            "resumed": self.resumed,
            "already_completed": self.already_completed,
            "steps": [s.to_dict() for s in self.steps],
            "statistics": dict(self.statistics),
            "message": self.message,
            "error": self.error,
            "error_log": list(self.error_log),
            "exit_code": self.exit_code,
            "backup_path": self.backup_path,
            "journal_path": self.journal_path,
            "stamp_path": self.stamp_path,
            "rollback": self.rollback.to_dict() if self.rollback else None,
        }
