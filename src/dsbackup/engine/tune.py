"""`dsbackup tune`: pick a compression level and chunk size from measurements on a sample.

How it works (docs/PERFORMANCE.md has the reasoning):

1. **Survey**: one keys-and-sizes pass over the store gives its record count and raw bytes
   (key + value) and remembers keys at evenly spaced byte offsets (bounded memory: the
   spacing doubles as the store turns out larger).
2. **Sample**: ``strata`` contiguous runs of records, one starting at each of those offsets,
   together about ``sample_bytes``: stratified across the key space, contiguous so that chunks
   and compression windows look like the real ones.
3. **Grid**: every (level, chunk size) candidate runs the native Chunker with compression
   (framing, hashing, ISA-L/zlib: the backup's hot path) over an evenly spread subset of the
   runs (at most ``grid_bytes``): CPU seconds per byte and output bytes per input byte.
4. **Calibrate**: BackupManager, in a fresh worker process as ``dsbackup backup`` would run,
   backs up two copies of the sample (a quarter and the whole; a store of the source's kind,
   or in memory in this process for backends scanned centrally) at the reference setting and again at the recommended one;
   ``time = a + b * bytes`` and ``size = c + d * bytes`` are fitted through the two points
   (best of ``reps`` runs), so fixed costs (start-up, worker processes, index) are not
   scaled up with the data. When the source would be backed up by parallel workers, the
   sample is at least 4.4 x the size at which backups go parallel, so both copies are
   backed up that way too.
5. **Project** every candidate to the whole store: the fitted line of the calibrated setting,
   with the compression share of ``b`` swapped for the candidate's own CPU cost divided by
   the workers, and its size scaled by its own output ratio. The recommended setting's
   projection comes from its own calibration.

The pieces: tune_sample.py (1, 2), tune_model.py (3, 5 and the choice), tune_calibrate.py and
tune_worker.py (4), tune_plot.py (the chart); this module runs them in order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dsbackup.engine.config import BackupConfig
from dsbackup.engine.tune_calibrate import COPY_SCHEMES, Calibrator
from dsbackup.engine.tune_model import (
    DEFAULT_CHUNK_TARGETS,
    DEFAULT_LEVELS,
    GOALS,
    REFERENCE,
    Row,
    TuneResult,
    candidates,
    measure,
    pareto_front,
    project,
    recommend,
)
from dsbackup.engine.tune_plot import plot
from dsbackup.engine.tune_sample import Sample, Survey, draw_sample, survey
from dsbackup.errors import ConfigError

__all__ = ["DEFAULT_CHUNK_TARGETS", "DEFAULT_LEVELS", "GOALS", "Row", "Sample", "Survey",
           "TuneResult", "draw_sample", "pareto_front", "plot", "recommend", "survey", "tune"]


def _parallel_expected(ds: Any, workers: int) -> tuple[str, bool]:
    from dsbackup.engine.backup import PARALLEL_MIN_BYTES, PARALLEL_SCHEMES

    scheme = getattr(ds, "scheme", "") or ""
    parallel = (workers > 1 and scheme in PARALLEL_SCHEMES
                and bool(getattr(ds, "parallel_readable", False)))
    size = None
    try:
        size = ds.approx_size()
    except Exception:  # an estimate only
        size = None
    return scheme, parallel and (size is None or size >= PARALLEL_MIN_BYTES)


def tune(source: Any, *, sample_mb: float = 64, grid_mb: float = 8,
         levels: Iterable[int] = DEFAULT_LEVELS,
         chunk_targets: Iterable[int] = DEFAULT_CHUNK_TARGETS, workers: int | None = None,
         goal: str = "balanced", max_seconds: float | None = None,
         max_bytes: int | None = None, strata: int = 32, reps: int = 3,
         work_dir: str | os.PathLike[str] | None = None) -> TuneResult:
    """Measure candidate settings on a sample of `source` and recommend one.

    `source` is a datastore URI or object. See the module docstring for the method.
    """
    from dsbackup.engine.backup import PARALLEL_MIN_BYTES, _open_source

    if goal not in GOALS:
        raise ConfigError(f"goal must be one of {', '.join(GOALS)}, got {goal!r}")
    if sample_mb <= 0 or grid_mb <= 0:
        raise ConfigError("--sample-mb and the grid size must be positive")
    t_start = time.perf_counter()
    nworkers = BackupConfig(workers=workers).effective_workers
    ds, owned = _open_source(source)
    tmp = Path(tempfile.mkdtemp(prefix="dsbackup-tune-", dir=work_dir))
    cal: Calibrator | None = None
    try:
        scheme, parallel = _parallel_expected(ds, nworkers)
        sv = survey(ds, strata)
        if sv.records == 0:
            raise ConfigError(f"{getattr(ds, 'uri', source)}: the datastore is empty; "
                              "nothing to tune")
        sample_bytes = int(sample_mb * 1e6)
        if parallel:  # both calibration copies must be large enough for parallel workers too
            sample_bytes = max(sample_bytes, int(4.4 * PARALLEL_MIN_BYTES))
        sample = draw_sample(ds, sv, sample_bytes)
        if owned:
            ds.close()
            owned = False
        grid = sample.spread(int(grid_mb * 1e6))
        mean_record = sv.raw_bytes / sv.records
        cands = candidates(levels, chunk_targets, mean_record)
        measured = {}
        for c in cands:
            cpu, out, _ = measure(grid, c)
            measured[c] = (cpu / max(1, grid.raw_bytes), out / max(1, grid.raw_bytes))
        ref = min(cands, key=lambda c: (abs(c.level - REFERENCE[0]),
                                        abs(c.chunk_target - REFERENCE[1])))
        min_copy = int(PARALLEL_MIN_BYTES * 1.1) if parallel else 0
        cal = Calibrator(sample, scheme if scheme in COPY_SCHEMES else "memory",
                         workers, reps, tmp, min_copy)
        fits = {ref: cal.run(ref)}
        rows = {c: project(c, fits, measured, ref, nworkers, sv.raw_bytes) for c in cands}
        best, why = recommend(list(rows.values()), goal, max_seconds, max_bytes)
        if best is not None:
            rc = next(c for c, r in rows.items() if r is best)
            if rc not in fits:
                fits[rc] = cal.run(rc)
                rows[rc] = project(rc, fits, measured, ref, nworkers, sv.raw_bytes)
                best = rows[rc]
                if (max_seconds is not None and best.projected_seconds > max_seconds) or (
                        max_bytes is not None and best.projected_bytes > max_bytes):
                    why += " (by the grid; its own calibration projects past the budget)"
        front = pareto_front(list(rows.values()))
        for r in front:
            r.pareto = True
        return TuneResult(
            source=str(getattr(ds, "uri", source)), records=sv.records, raw_bytes=sv.raw_bytes,
            sample_records=sample.records, sample_bytes=sample.raw_bytes,
            grid_bytes=grid.raw_bytes, workers=nworkers, goal=goal, max_seconds=max_seconds,
            max_bytes=max_bytes, rows=list(rows.values()), recommended=best, reason=why,
            fits={f"level {c.level} chunk_size {c.chunk_size}": asdict(f)
                  for c, f in fits.items()},
            duration_s=time.perf_counter() - t_start)
    finally:
        if cal is not None:
            cal.close()
        if owned:
            ds.close()
        shutil.rmtree(tmp, ignore_errors=True)
