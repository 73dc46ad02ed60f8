"""tune's model: the candidate settings and their cost on the grid (the native Chunker with
compression: the backup's hot path), the line fitted through the calibration backups, the
projection of every candidate to the whole store, and the choice for a goal or budget."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dsbackup._ext.compress import ENGINES
from dsbackup._ext.framing import Chunker
from dsbackup.engine.config import AUTO_CHUNK_TARGET_BYTES, DEFAULT_CHUNK_MAX_BYTES, BackupConfig
from dsbackup.engine.tune_sample import Sample
from dsbackup.errors import ConfigError

__all__ = ["DEFAULT_CHUNK_TARGETS", "DEFAULT_LEVELS", "GOALS", "REFERENCE", "Candidate", "Fit",
           "Row", "TuneResult", "candidates", "measure", "pareto_front", "project", "recommend"]

GOALS = ("speed", "size", "balanced")
DEFAULT_LEVELS = tuple(range(10))
DEFAULT_CHUNK_TARGETS = (256 << 10, 1 << 20, 4 << 20)
REFERENCE = (1, AUTO_CHUNK_TARGET_BYTES)  # level, chunk target: the defaults of `dsbackup backup`


@dataclass(frozen=True)
class Candidate:
    level: int
    chunk_size: int  # mean records per chunk (BackupConfig.chunk_size)
    chunk_max_bytes: int
    chunk_target: int  # mean chunk bytes it aims at

    def config(self, workers: int | None) -> BackupConfig:
        return BackupConfig(compression_level=self.level, chunk_size=self.chunk_size,
                            chunk_max_bytes=self.chunk_max_bytes, workers=workers)


def candidates(levels: Iterable[int], chunk_targets: Iterable[int], mean_record: float,
               ) -> list[Candidate]:
    out: dict[tuple[int, int, int], Candidate] = {}
    for target in chunk_targets:
        cs = max(1, round(target / max(1.0, mean_record)))
        cmax = max(DEFAULT_CHUNK_MAX_BYTES, 2 * target)
        for lv in levels:
            if not 0 <= lv <= 9:
                raise ConfigError(f"compression level must be 0-9, got {lv}")
            out.setdefault((lv, cs, cmax), Candidate(lv, cs, cmax, target))
    return sorted(out.values(), key=lambda c: (c.level, c.chunk_target))


def measure(sample: Sample, cand: Candidate) -> tuple[float, int, int]:
    """(CPU seconds, output bytes, chunks) of framing + hashing + compressing the sample."""
    ch = Chunker(cand.chunk_size, cand.chunk_max_bytes)
    out = chunks = 0
    t0 = time.thread_time()
    for keys, values in sample.runs:
        for c in ch.add_compress(keys, values, cand.level):
            out += len(c.body.data)
            chunks += 1
    last = ch.finish_compress(cand.level)
    if last is not None:
        out += len(last.body.data)
        chunks += 1
    return time.thread_time() - t0, out, chunks


@dataclass
class Fit:
    """time = a + b * raw bytes, size = c + d * raw bytes (from two sample copies)."""

    a: float
    b: float
    c: float
    d: float
    points: list[dict[str, float]] = field(default_factory=list)

    def seconds(self, nbytes: int) -> float:
        return self.a + self.b * nbytes

    def size(self, nbytes: int) -> float:
        return self.c + self.d * nbytes


@dataclass
class Row:
    level: int
    engine: str
    chunk_size: int
    chunk_max_bytes: int
    chunk_target: int
    core_mb_s: float  # native frame+hash+compress throughput on one core
    ratio: float  # raw bytes / compressed bytes (higher is smaller)
    projected_seconds: float
    projected_bytes: int
    projected_mb_s: float
    calibrated: bool = False
    pareto: bool = False


@dataclass
class TuneResult:
    source: str
    records: int
    raw_bytes: int
    sample_records: int
    sample_bytes: int
    grid_bytes: int
    workers: int
    goal: str
    max_seconds: float | None
    max_bytes: int | None
    rows: list[Row]
    recommended: Row | None
    reason: str
    fits: dict[str, dict[str, Any]]
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recommended_options"] = self.options()
        return d

    def options(self) -> list[str]:
        r = self.recommended
        if r is None:
            return []
        return ["--level", str(r.level), "--chunk-size", str(r.chunk_size),
                "--chunk-max-bytes", str(r.chunk_max_bytes)]


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """Rows no other row beats on both projected time and projected size."""
    front = []
    for r in rows:
        dominated = any(
            o is not r and o.projected_seconds <= r.projected_seconds
            and o.projected_bytes <= r.projected_bytes
            and (o.projected_seconds < r.projected_seconds
                 or o.projected_bytes < r.projected_bytes)
            for o in rows)
        if not dominated:
            front.append(r)
    return front


def recommend(rows: Sequence[Row], goal: str = "balanced", max_seconds: float | None = None,
              max_bytes: int | None = None) -> tuple[Row | None, str]:
    """The row that best meets `goal` within the budgets, and why (None when no row fits)."""
    if goal not in GOALS:
        raise ConfigError(f"goal must be one of {', '.join(GOALS)}, got {goal!r}")
    fit = [r for r in rows
           if (max_seconds is None or r.projected_seconds <= max_seconds)
           and (max_bytes is None or r.projected_bytes <= max_bytes)]
    if not fit:
        return None, "no setting meets the budget"
    if max_seconds is not None and max_bytes is None and goal == "balanced":
        goal = "size"  # a time budget: the smallest archive that fits it
    elif max_bytes is not None and max_seconds is None and goal == "balanced":
        goal = "speed"  # a size budget: the fastest that fits it
    front = pareto_front(fit)
    if goal == "speed":
        best = min(front, key=lambda r: (r.projected_seconds, r.projected_bytes))
        why = "fastest projected backup"
    elif goal == "size":
        best = min(front, key=lambda r: (r.projected_bytes, r.projected_seconds))
        why = "smallest projected archive"
    else:
        t0 = min(r.projected_seconds for r in front)
        s0 = min(r.projected_bytes for r in front)
        best = min(front, key=lambda r: (r.projected_seconds / t0) * (r.projected_bytes / s0))
        why = "least (time / fastest) x (size / smallest) on the Pareto front"
    budget = []
    if max_seconds is not None:
        budget.append(f"time <= {max_seconds:g} s")
    if max_bytes is not None:
        budget.append(f"size <= {max_bytes} B")
    if budget:
        why += " within " + " and ".join(budget)
    return best, why


def project(c: Candidate, fits: dict[Candidate, Fit],
            measured: dict[Candidate, tuple[float, float]], ref: Candidate, nworkers: int,
            raw_bytes: int) -> Row:
    """Candidate ``c``'s projection to a store of ``raw_bytes``: the fitted line of its own
    calibration if it has one, else the reference's with the compression share of ``b``
    swapped for ``c``'s own CPU cost over the workers and the size scaled by its own output
    ratio. ``measured``: CPU seconds and output bytes per input byte from the grid."""
    anchor = c if c in fits else ref
    f = fits[anchor]
    cpu_c, out_c = measured[c]
    cpu_a, out_a = measured[anchor]
    b = max(f.b - cpu_a / nworkers, 0.0) + cpu_c / nworkers if c is not anchor else f.b
    secs = f.a + b * raw_bytes
    size = f.c + f.d * raw_bytes * (out_c / out_a if out_a else 1.0)
    return Row(c.level, ENGINES[c.level], c.chunk_size, c.chunk_max_bytes,
               c.chunk_target, 1 / cpu_c / 1e6 if cpu_c else float("inf"),
               1 / out_c if out_c else 0.0, secs, int(size),
               raw_bytes / secs / 1e6 if secs > 0 else 0.0, c in fits)
