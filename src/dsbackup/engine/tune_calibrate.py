"""tune's calibration: two copies of the sample backed up for real at one setting, and
``time = a + b * bytes``, ``size = c + d * bytes`` fitted through them (best of ``reps``), so
fixed costs (start-up, worker processes, index) are not scaled up with the data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dsbackup.engine.tune_model import Candidate, Fit
from dsbackup.engine.tune_sample import Sample
from dsbackup.engine.tune_worker import backup_in_worker

__all__ = ["COPY_SCHEMES", "Calibrator"]

# sources whose sample copies are stores of their own kind on disk; others are copied in memory
COPY_SCHEMES = {"lmdb", "flatfs", "sqlite"}


class Calibrator:
    """Two copies of the sample (a quarter and the whole) in a store the real pipeline reads
    the way it reads the source; backs them up with BackupManager."""

    def __init__(self, sample: Sample, scheme: str, workers: int | None, reps: int,
                 work_dir: Path, min_copy_bytes: int = 0) -> None:
        self.workers = workers
        self.reps = reps
        self.work_dir = work_dir
        self.copies: list[tuple[Any, int]] = []  # (uri or datastore, raw bytes)
        # the points far apart (a quarter and the whole): the slope is a difference of two
        # noisy times, and it is extrapolated to the whole store
        half = sample.part(0.25)
        if min_copy_bytes and half.raw_bytes < min_copy_bytes <= sample.raw_bytes:
            half = sample.part(min_copy_bytes / max(1, sample.raw_bytes))
        for i, s in enumerate((half, sample)):
            self.copies.append((self._copy(s, scheme, i), s.raw_bytes))

    def _copy(self, s: Sample, scheme: str, i: int) -> Any:
        from dsbackup.datastores import open_datastore
        from dsbackup.datastores.memory import MemoryDatastore

        if scheme not in COPY_SCHEMES:
            ds: Any = MemoryDatastore()
            for k, v in s.runs:
                ds.put_many(k, v)
            return ds
        path = self.work_dir / f"copy{i}"
        kw: dict[str, Any] = {"sync": False}
        ds = open_datastore(f"{scheme}:{path}", **kw)
        try:
            for k, v in s.runs:
                for j in range(0, len(k), 4096):
                    ds.put_many(k[j:j + 4096], v[j:j + 4096])
            ds.sync("/")
        finally:
            ds.close()
        return ds.uri

    def _backup(self, src: Any, cand: Candidate, out: Path) -> tuple[float, int]:
        """(seconds, archive bytes) of one backup. Copies on disk are backed up in a fresh
        worker process, as a user's `dsbackup backup` runs (cold start, worker start-up
        included; tune_worker.py); the time is the backup's own duration, not interpreter
        start-up. Copies in memory are backed up here."""
        out.unlink(missing_ok=True)
        if not isinstance(src, str):
            from dsbackup.engine.backup import BackupManager

            t0 = time.perf_counter()
            meta = BackupManager(cand.config(self.workers)).create_backup(src, out)
            return time.perf_counter() - t0, meta.compressed_size
        # the settings `dsbackup backup --workers N` would use (N = 0 means the default)
        return backup_in_worker(src, out, cand.config(self.workers or None))

    def run(self, cand: Candidate) -> Fit:
        times: list[list[float]] = [[] for _ in self.copies]
        sizes = [0] * len(self.copies)
        out = self.work_dir / "calibration.tar.gz"
        for _ in range(self.reps):
            for i, (src, _n) in enumerate(self.copies):
                secs, sizes[i] = self._backup(src, cand, out)
                times[i].append(secs)
        out.unlink(missing_ok=True)
        (x0, x1) = (n for _, n in self.copies)
        t0_, t1_ = (min(t) for t in times)  # best of reps: others' load only slows
        if x1 > x0:
            b = max((t1_ - t0_) / (x1 - x0), 0.0)
            a = t1_ - b * x1
            if a < 0 or b == 0:  # noise: no measurable fixed cost
                a, b = 0.0, t1_ / x1
            d = (sizes[1] - sizes[0]) / (x1 - x0)
            c = sizes[1] - d * x1
        else:
            a, b, c, d = 0.0, t1_ / max(1, x1), 0.0, sizes[1] / max(1, x1)
        pts = [{"raw_bytes": n, "seconds": t, "archive_bytes": s}
               for (_, n), t, s in zip(self.copies, (t0_, t1_), sizes)]
        return Fit(a, b, c, d, pts)

    def close(self) -> None:
        for src, _ in self.copies:
            if not isinstance(src, str):
                src.close()
