"""The counters of a :class:`MigrationManager`'s runs (``get_metrics()``)."""

from __future__ import annotations

import threading
from typing import Any

from dsbackup.migration.result import MigrationResult

__all__ = ["MigrationMetrics"]


class MigrationMetrics:
    """Runs, successes, failures, dry runs, rollbacks, records and bytes of one manager;
    thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {
            "migrations_total": 0, "migrations_succeeded": 0, "migrations_failed": 0,
            "dry_runs": 0, "rollbacks": 0, "records_total": 0, "bytes_total": 0,
            "last_duration_s": None, "last_records_per_s": None, "last_plan": None,
        }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def record(self, result: MigrationResult) -> None:
        """Count a finished run, and add its duration and rate to its statistics."""
        with self._lock:
            m = self._values
            m["migrations_total"] += 1
            if result.dry_run:
                m["dry_runs"] += 1
            if result.success:
                m["migrations_succeeded"] += 1
            else:
                m["migrations_failed"] += 1
            if result.rolled_back:
                m["rollbacks"] += 1
            records = result.statistics.get("total_records", 0)
            m["records_total"] += records
            m["bytes_total"] += result.statistics.get("total_bytes", 0)
            m["last_duration_s"] = result.duration_s
            m["last_records_per_s"] = (records / result.duration_s
                                       if result.duration_s > 0 else None)
            m["last_plan"] = result.plan_id
        result.statistics.setdefault("duration_s", result.duration_s)
        if result.duration_s > 0:
            result.statistics["records_per_s"] = \
                result.statistics.get("total_records", 0) / result.duration_s
