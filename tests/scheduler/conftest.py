"""Shared helpers of the scheduler tests: a fake backup runner and a scheduler factory."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dsbackup.errors import BackupError, Cancelled
from dsbackup.scheduler import BackupScheduler, SchedulerConfig
from dsbackup.scheduler.clock import ManualClock
from dsbackup.scheduler.runner import ArchiveInfo, RunResult, VerifyResult


class FakeRunner:
    """Writes a small file per backup. ``fail`` (a set of run numbers, 1-based) makes runs fail;
    ``gate`` (an Event) makes each run wait for it, to test overlap and concurrency."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.calls = 0
        self.fail: set[int] = set()
        self.gate: threading.Event | None = None
        self.active = 0
        self.max_active = 0
        self.verify_ok = True
        self.verifies: list[tuple[Path, bool, float | None]] = []
        self.fingerprints: dict[str, str] = {}
        self.trusted: list[bool] = []  # trust_parent of each run, in order
        self._lock = threading.Lock()

    def run(self, schedule, archive_path: Path, cancel_event: threading.Event, parent=None, *,
            trust_parent: bool = False):
        with self._lock:
            self.trusted.append(trust_parent)
            self.calls += 1
            n = self.calls
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                while not self.gate.wait(0.01):
                    if cancel_event.is_set():
                        raise Cancelled("backup cancelled")
            if n in self.fail:
                raise BackupError(f"simulated failure of run {n}")
            archive_path.write_bytes(b"archive %d" % n)
            created = self.clock.now() if self.clock else datetime.now(timezone.utc)
            self.fingerprints[archive_path.name] = f"fp{n:06d}"
            return RunResult(path=archive_path, created=created, fingerprint=f"fp{n:06d}",
                             size=archive_path.stat().st_size, keys=n,
                             parent=self.fingerprints[parent.name] if parent else None)
        finally:
            with self._lock:
                self.active -= 1

    def verify(self, path: Path, deep: bool, sample: float | None) -> VerifyResult:
        self.verifies.append((path, deep, sample))
        return VerifyResult(self.verify_ok and path.exists(), [] if self.verify_ok else ["bad"])

    def inspect(self, path: Path) -> ArchiveInfo:
        raise NotImplementedError("the fake runner does not read archives")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 5, 12, 0, 30, tzinfo=timezone.utc))


@pytest.fixture
def fast_dir(tmp_path: Path):
    """A scratch directory on tmpfs when there is one: the scheduler fsyncs its state after
    every run, which long simulations would otherwise spend most of their time on."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="dsbackup-sched-", dir=shm))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_scheduler(tmp_path: Path, clock: ManualClock):
    made: list[BackupScheduler] = []

    def factory(runner=None, notifiers="off", base: Path = tmp_path, **kw) -> BackupScheduler:
        """``notifiers``: "off" (default) for none, None for those of the configuration."""
        kw.setdefault("default_backup_dir", base / "backups")
        kw.setdefault("state_path", base / "state")
        kw.setdefault("health_check_interval", None)
        sched = BackupScheduler(SchedulerConfig(**kw), runner=runner or FakeRunner(clock),
                                clock=clock, notifiers=[] if notifiers == "off" else notifiers)
        made.append(sched)
        return sched

    yield factory
    for s in made:
        s.stop(cancel=True, timeout=5)
        s._daemon_lock.release()
