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
4. **Calibrate**: a fresh ``dsbackup backup`` process backs up two copies of the sample (a
   quarter and the whole; a store of the source's kind, or in memory with BackupManager for
   backends scanned centrally) at the reference setting and again at the recommended one;
   ``time = a + b * bytes`` and ``size = c + d * bytes`` are fitted through the two points
   (best of ``reps`` runs), so fixed costs (start-up, worker processes, index) are not
   scaled up with the data. When the source would be backed up by parallel workers, the
   sample is at least 4.4 x the size at which backups go parallel, so both copies are
   backed up that way too.
5. **Project** every candidate to the whole store: the fitted line of the calibrated setting,
   with the compression share of ``b`` swapped for the candidate's own CPU cost divided by
   the workers, and its size scaled by its own output ratio. The recommended setting's
   projection comes from its own calibration.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsbackup._ext.compress import ENGINES
from dsbackup._ext.framing import Chunker
from dsbackup.engine.config import AUTO_CHUNK_TARGET_BYTES, DEFAULT_CHUNK_MAX_BYTES, BackupConfig
from dsbackup.errors import BackupError, ConfigError

log = logging.getLogger(__name__)

GOALS = ("speed", "size", "balanced")
DEFAULT_LEVELS = tuple(range(10))
DEFAULT_CHUNK_TARGETS = (256 << 10, 1 << 20, 4 << 20)
REFERENCE = (1, AUTO_CHUNK_TARGET_BYTES)  # level, chunk target: the defaults of `dsbackup backup`
COPY_SCHEMES = {"lmdb", "flatfs", "sqlite"}


# -- survey and sample ---------------------------------------------------------------------

@dataclass
class Survey:
    records: int
    raw_bytes: int  # key + value bytes
    starts: list[bytes]  # keys at evenly spaced byte offsets (stratum starts)


def survey(ds: Any, strata: int) -> Survey:
    """One keys-and-sizes pass: totals and up to `strata` evenly spaced start keys."""
    step = 1  # bytes between marks; doubles whenever there are more than 4 x strata marks
    marks: list[tuple[int, bytes]] = []  # (byte offset, key) at multiples of `step`
    n = total = 0
    next_mark = 0
    for keys, sizes in ds.scan_key_sizes():
        for k, s in zip(keys, sizes):
            if total >= next_mark:
                marks.append((total, k))
                next_mark = (total // step + 1) * step
                if len(marks) > 4 * strata:
                    step *= 2  # keep every other mark: the spacing doubles
                    marks = marks[::2]
                    next_mark = (total // step + 1) * step
            n += 1
            total += len(k) + s
    if not marks:
        return Survey(0, 0, [])
    want = [total * i // strata for i in range(strata)]
    starts: list[bytes] = []
    j = 0
    for w in want:
        while j + 1 < len(marks) and marks[j + 1][0] <= w:
            j += 1
        if not starts or marks[j][1] > starts[-1]:
            starts.append(marks[j][1])
    return Survey(n, total, starts)


@dataclass
class Sample:
    runs: list[tuple[list[bytes], list[bytes]]]  # contiguous key ranges, in key order

    @property
    def records(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    @property
    def raw_bytes(self) -> int:
        return sum(sum(map(len, k)) + sum(map(len, v)) for k, v in self.runs)

    def part(self, fraction: float) -> Sample:
        """The first `fraction` of every run (still stratified)."""
        out = []
        for k, v in self.runs:
            m = max(1, round(len(k) * fraction))
            out.append((k[:m], v[:m]))
        return Sample(out)

    def spread(self, max_bytes: int) -> Sample:
        """Evenly spaced whole runs, together at most about `max_bytes`."""
        total = self.raw_bytes
        if total <= max_bytes or len(self.runs) <= 1:
            return self
        keep = max(1, round(len(self.runs) * max_bytes / total))
        idx = sorted({i * len(self.runs) // keep for i in range(keep)})
        return Sample([self.runs[i] for i in idx])


def draw_sample(ds: Any, sv: Survey, sample_bytes: int) -> Sample:
    """Contiguous runs of about sample_bytes / strata bytes from each stratum start."""
    if not sv.starts:
        return Sample([])
    per_run = max(1, sample_bytes // len(sv.starts)) if sv.raw_bytes > sample_bytes else None
    runs = []
    bounds = list(sv.starts[1:]) + [None]
    for start, end in zip(sv.starts, bounds):
        keys: list[bytes] = []
        values: list[bytes] = []
        got = 0
        batch = min(per_run or 8 << 20, 8 << 20)
        it = ds.scan_batches(start, end, max_bytes=max(4096, batch))
        try:
            for bk, bv in it:
                for k, v in zip(bk, bv):
                    keys.append(k)
                    values.append(v)
                    got += len(k) + len(v)
                    if per_run is not None and got >= per_run:
                        break
                if per_run is not None and got >= per_run:
                    break
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if keys:
            runs.append((keys, values))
    return Sample(runs)


# -- candidates, grid measurement --------------------------------------------------------

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


# -- calibration with the real pipeline --------------------------------------------------

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


class Calibrator:
    """Two copies of the sample (half and whole) in a store the real pipeline reads the way it
    reads the source; backs them up with BackupManager."""

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
        """(seconds, archive bytes) of one backup. Copies on disk are backed up by a fresh
        `dsbackup backup` process, as a user would run it (cold start, worker start-up
        included); the time is the backup's own duration, not interpreter start-up."""
        out.unlink(missing_ok=True)
        if not isinstance(src, str):
            from dsbackup.engine.backup import BackupManager

            t0 = time.perf_counter()
            meta = BackupManager(cand.config(self.workers)).create_backup(src, out)
            return time.perf_counter() - t0, meta.compressed_size
        import dsbackup

        env = dict(os.environ)
        src_root = str(Path(dsbackup.__file__).resolve().parents[1])
        env["PYTHONPATH"] = src_root + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "dsbackup", "backup", src, str(out), "--json",
               "--level", str(cand.level), "--chunk-size", str(cand.chunk_size),
               "--chunk-max-bytes", str(cand.chunk_max_bytes)]
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise BackupError(f"calibration backup of the sample failed (exit {p.returncode}): "
                              f"{p.stderr.strip()[-500:]}")
        meta = json.loads(p.stdout)["backup"]
        return float(meta["statistics"]["duration_s"]), int(meta["compressed_size"])

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


# -- result -------------------------------------------------------------------------------

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


# -- the whole run ------------------------------------------------------------------------

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

        def project(c: Candidate) -> Row:
            anchor = c if c in fits else ref
            f = fits[anchor]
            cpu_c, out_c = measured[c]
            cpu_a, out_a = measured[anchor]
            b = max(f.b - cpu_a / nworkers, 0.0) + cpu_c / nworkers if c is not anchor else f.b
            secs = f.a + b * sv.raw_bytes
            size = f.c + f.d * sv.raw_bytes * (out_c / out_a if out_a else 1.0)
            return Row(c.level, ENGINES[c.level], c.chunk_size, c.chunk_max_bytes,
                       c.chunk_target, 1 / cpu_c / 1e6 if cpu_c else float("inf"),
                       1 / out_c if out_c else 0.0, secs, int(size),
                       sv.raw_bytes / secs / 1e6 if secs > 0 else 0.0, c in fits)

        rows = {c: project(c) for c in cands}
        best, why = recommend(list(rows.values()), goal, max_seconds, max_bytes)
        if best is not None:
            rc = next(c for c, r in rows.items() if r is best)
            if rc not in fits:
                fits[rc] = cal.run(rc)
                rows[rc] = project(rc)
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


def plot(result: TuneResult, path: str | os.PathLike[str]) -> None:
    """Projected throughput against compression ratio, Pareto front marked (needs matplotlib:
    ``pip install 'dsbackup[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which is not installed: "
                          "pip install 'dsbackup[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = result.rows
    ax.scatter([r.ratio for r in rows], [r.projected_mb_s for r in rows], s=18, c="0.6",
               label="candidates")
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.ratio)
    ax.plot([r.ratio for r in front], [r.projected_mb_s for r in front], "o-", c="C0",
            label="Pareto front")
    for r in front:
        ax.annotate(f"L{r.level}/{r.chunk_target >> 10}K", (r.ratio, r.projected_mb_s),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    if result.recommended is not None:
        r = result.recommended
        ax.scatter([r.ratio], [r.projected_mb_s], s=120, facecolors="none", edgecolors="C3",
                   linewidths=2, label=f"recommended ({result.goal})")
    ax.set_xlabel("compression ratio (raw / archive)")
    ax.set_ylabel("projected backup throughput (MB/s)")
    ax.set_title(f"dsbackup tune: {result.records} records, "
                 f"{result.raw_bytes / 1e6:.0f} MB, {result.workers} workers", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)
