"""Backup, restore and deep-verify time against the worker count, next to ISA-L's own
ceiling at the same process count, measured in one run.

Usage: python benchmarks/scaling.py [--workers 1,2,4,8,16] [--datasets blocks,small]
       [--ops backup,restore,verify] [--runs 3] [--pigz] [--json FILE] [--work-dir DIR]
Scale the data sets with DSBACKUP_BENCH_SCALE as for compare.py (benchdata.py caches them).

For every data set and worker count N the rows are (each a subprocess, wall time):
- ``dsbackup backup --workers N`` into a file under ``--work-dir`` (fsynced, as always);
- ``isal-1 xN`` (the ceiling): ISA-L level 1 alone on the same values, 4 MiB pieces, in N
  forked processes each compressing every Nth piece (compare.py's ``isal-procs`` child),
  timed from the start signal to the last process's end, the values already in memory: what
  pure compression costs on N cores. Our workers are processes, so this is their ceiling;
- ``isal-1 xN threads`` (op ``threads``): the same in N threads of one process, as the
  ceiling was measured before; kept for comparison (the threads share one interpreter and
  scale less, so a ratio against them flatters us);
- ``dsbackup restore --workers N`` into an empty LMDB, and ``dsbackup verify --workers N``
  (deep) of that N's archive;
- with ``--pigz`` (blocks only): ``tar -cf - | pigz -p 2`` of the flatfs copy, next to N = 2
  (the issue's baseline: ours at 2 workers >= 8x it).

Rows run round-robin, the order reversed every round, every row's input read into the page
cache first (untimed); medians of ``--runs`` rounds. The table gives, per N: backup MB/s and
records/s; "of xN" = ISA-L in N processes' time / ours (1.0: the pipeline costs nothing over
compression in N processes); "of thr" = the same against N threads; "isal sp" = how ISA-L
itself scales (x1 time / N-process time); "of N x1" = ISA-L x1 time / (N x ours), the
issue's measure (at N = 2 its target is 0.75); speed-up against N = 1; restore and verify
GB/s. The JSON (``--json``) is
rewritten after every round, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from compare import ME, PY, Sample, _rm, measure, run_measured  # noqa: E402


@dataclass
class Row:
    dataset: str
    op: str  # backup | ceiling (processes) | threads (ceiling) | restore | verify | pigz
    workers: int
    cmd: list[str]
    inputs: tuple[Path, ...]
    output: Path | None = None  # removed before each run
    internal_time: bool = False  # the child prints {"seconds": ...}
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    def median(self) -> float | None:
        return statistics.median(s.seconds for s in self.samples) if self.samples else None

    def rss(self) -> float | None:
        return max(s.rss_mib for s in self.samples) if self.samples else None


def build_rows(name: str, uri: str, src: Path, flatfs: Path | None, work: Path,
               counts: list[int], ops: set[str]) -> list[Row]:
    rows: list[Row] = []
    w = work / name
    w.mkdir(parents=True, exist_ok=True)
    dsb = [PY, "-m", "dsbackup"]
    if "ceiling" in ops and 1 not in counts:  # "of N x1" needs the one-thread ceiling
        size = w / "isal-1.size"
        rows.append(Row(name, "ceiling", 1, [PY, ME, "--child", "isal", uri, "1", str(size)],
                        (src,), size, internal_time=True))
    for n in counts:
        arc = w / f"ours-{n}.tar.gz"
        rows.append(Row(name, "backup", n, dsb + ["backup", "--workers", str(n), uri, str(arc)],
                        (src,), arc))
        if "ceiling" in ops:
            size = w / f"isal-{n}.size"
            child = "isal" if n == 1 else "isal-procs"  # one process: the same either way
            rows.append(Row(name, "ceiling", n, [PY, ME, "--child", child, uri, str(n),
                                                 str(size)], (src,), size, internal_time=True))
        if "threads" in ops and n > 1:
            size = w / f"isal-{n}-threads.size"
            rows.append(Row(name, "threads", n, [PY, ME, "--child", "isal", uri, str(n),
                                                 str(size)], (src,), size, internal_time=True))
        if "restore" in ops:
            dst = w / f"restored-{n}"
            rows.append(Row(name, "restore", n, dsb + ["restore", "--workers", str(n), str(arc),
                                                       f"lmdb:{dst}"], (arc,), dst))
        if "verify" in ops:
            rows.append(Row(name, "verify", n, dsb + ["verify", "--workers", str(n), str(arc)],
                            (arc,)))
        if flatfs is not None and n == 2 and shutil.which("pigz"):
            out = w / f"pigz-{n}.tar.gz"
            rows.append(Row(name, "pigz", n, ["bash", "-o", "pipefail", "-c",
                                              f"tar -cf - -C '{flatfs}' . | pigz -p {n} > "
                                              f"'{out}'"], (flatfs,), out))
    return rows


def run_round(rows: list[Row], r: int, env: dict[str, str], timeout: float) -> None:
    # backups first: restore and verify read the archives they write
    for phase in (("backup", "ceiling", "threads", "pigz"), ("restore",), ("verify",)):
        todo = [row for row in rows if row.op in phase and row.error is None]
        for row in (todo if r % 2 == 0 else todo[::-1]):
            try:
                s = measure(row.cmd, env, timeout, output=row.output, inputs=row.inputs,
                            internal_time=row.internal_time)
            except (RuntimeError, TimeoutError, OSError) as exc:
                row.error = str(exc)
                print(f"  {row.dataset} {row.op} x{row.workers}: FAILED {exc}", file=sys.stderr)
                continue
            if row.op in ("backup", "pigz") and row.output is not None:
                s.size = row.output.stat().st_size
            row.samples.append(s)
            print(f"  round {r + 1}: {row.dataset:6} {row.op:8} x{row.workers:<3} "
                  f"{s.seconds:8.3f} s", file=sys.stderr, flush=True)
            if row.op == "restore" and row.output is not None:
                _rm(row.output)  # restored stores are large


def summarize(rows: list[Row], info: dict) -> tuple[list[dict], str]:
    by = {(r.dataset, r.op, r.workers): r for r in rows}
    out: list[dict] = []
    lines = [f"{'data':6} {'N':>3} {'backup s':>9} {'MB/s':>6} {'Mrec/s':>6} {'of xN':>6} "
             f"{'of thr':>6} {'isal sp':>7} {'of N x1':>7} {'speedup':>7} {'restore GB/s':>12} "
             f"{'verify GB/s':>11} "
             f"{'pigz x ours':>11} {'RSS MiB':>7}"]
    for name, d in info.items():
        raw, recs = d["raw_bytes"], d["records"]
        one = by.get((name, "backup", min(d["workers"])))
        isal1 = by.get((name, "ceiling", 1))
        for n in d["workers"]:
            b = by.get((name, "backup", n))
            if b is None or b.median() is None:
                continue
            t = b.median()
            ce = by.get((name, "ceiling", n))
            th = by.get((name, "threads", n))
            rs = by.get((name, "restore", n))
            vf = by.get((name, "verify", n))
            pz = by.get((name, "pigz", n))

            def med(row: Row | None) -> float | None:
                return row.median() if row is not None else None

            e = {"dataset": name, "workers": n, "backup_s": t,
                 "backup_s_all": [s.seconds for s in b.samples],
                 "backup_MB_s": raw / t / 1e6, "backup_Mrec_s": recs / t / 1e6,
                 "archive_bytes": b.samples[-1].size, "backup_peak_rss_mib": b.rss(),
                 "ceiling_xN_s": med(ce),
                 "of_xN": med(ce) / t if med(ce) else None,
                 "ceiling_threads_s": med(th),
                 "of_xN_threads": med(th) / t if med(th) else None,
                 "isal_speedup": med(isal1) / med(ce) if med(isal1) and med(ce) else None,
                 "of_N_x1": med(isal1) / (n * t) if med(isal1) else None,
                 "speedup": med(one) / t if med(one) else None,
                 "restore_s": med(rs), "restore_GB_s": raw / med(rs) / 1e9 if med(rs) else None,
                 "verify_s": med(vf), "verify_GB_s": raw / med(vf) / 1e9 if med(vf) else None,
                 "pigz_s": med(pz), "pigz_x_ours": med(pz) / t if med(pz) else None}
            out.append(e)

            def f(v: float | None, fmt: str, width: int) -> str:
                return format(v, fmt).rjust(width) if v is not None else "-".rjust(width)

            lines.append(f"{name:6} {n:3d} {t:9.3f} {e['backup_MB_s']:6.0f} "
                         f"{e['backup_Mrec_s']:6.2f} {f(e['of_xN'], '.2f', 6)} "
                         f"{f(e['of_xN_threads'], '.2f', 6)} {f(e['isal_speedup'], '.2f', 7)} "
                         f"{f(e['of_N_x1'], '.2f', 7)} {f(e['speedup'], '.2f', 7)} "
                         f"{f(e['restore_GB_s'], '.2f', 12)} {f(e['verify_GB_s'], '.2f', 11)} "
                         f"{f(e['pigz_x_ours'], '.2f', 11)} {f(e['backup_peak_rss_mib'], '.0f', 7)}")
    for r in rows:
        if r.error:
            lines.append(f"FAILED {r.dataset} {r.op} x{r.workers}: {r.error[:200]}")
    return out, "\n".join(lines)


def _startup(env: dict[str, str]) -> float:
    """Median wall time of ``python -m dsbackup --version``: the fixed cost in every row."""
    times = [run_measured([PY, "-m", "dsbackup", "--version"], env, 60)[0].seconds
             for _ in range(5)]
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default=None,
                    help="comma-separated worker counts (default 1,2,4,... up to the CPUs)")
    ap.add_argument("--datasets", default="blocks,small")
    ap.add_argument("--ops", default="ceiling,threads,restore,verify",
                    help="besides backup: any of ceiling (N processes), threads (the ceiling "
                    "in N threads), restore, verify")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pigz", action="store_true", help="tar|pigz rows (blocks, flatfs copy)")
    ap.add_argument("--timeout", type=float, default=600, help="per command, seconds")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    import benchdata

    cpus = os.cpu_count() or 1
    if args.workers:
        counts = sorted({int(x) for x in args.workers.split(",")})
    else:
        counts = sorted({1 << i for i in range(cpus.bit_length()) if 1 << i <= cpus} | {cpus})
    ops = set(args.ops.split(",")) - {""}
    bad = ops - {"ceiling", "threads", "restore", "verify"}
    if bad:
        ap.error(f"unknown ops {sorted(bad)}")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    compileall.compile_dir(str(ROOT / "src" / "dsbackup"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="dsbackup-scaling-", dir=args.work_dir))
    path = args.json or HERE / "results" / f"scaling-{time.strftime('%Y%m%dT%H%M%S')}.json"
    rows: list[Row] = []
    info: dict = {}
    doc = {"schema": 2, "ceiling": "processes", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "host": platform.node(), "cpus": cpus, "python": platform.python_version(),
           "kernel": platform.release(), "scale": benchdata.scale(), "runs": args.runs,
           "workers": counts, "work_dir": str(work)}
    try:
        for name in args.datasets.split(","):
            t0 = time.perf_counter()
            flatfs = None
            if name == "blocks":
                d = benchdata.blocks_lmdb()
                if args.pigz:
                    flatfs = benchdata.blocks_flatfs().path
            elif name == "small":
                d = benchdata.small_lmdb()
            else:
                ap.error(f"unknown data set {name!r} (blocks, small)")
            info[name] = {"records": d.records, "raw_bytes": d.raw_bytes, "workers": counts,
                          "ready_s": time.perf_counter() - t0}
            print(f"{name}: {d.records} records, {d.raw_bytes / 1e6:.1f} MB (ready in "
                  f"{info[name]['ready_s']:.1f} s)", file=sys.stderr, flush=True)
            rows += build_rows(name, d.uri, d.path, flatfs, work, counts, ops)
        doc["startup_s"] = _startup(env)
        print(f"python -m dsbackup --version: {doc['startup_s']:.3f} s", file=sys.stderr)
        for r in range(args.runs):
            run_round(rows, r, env, args.timeout)
            doc["rounds_done"] = r + 1
            doc["results"], text = summarize(rows, info)
            doc["datasets"] = info
            doc["loadavg"] = os.getloadavg()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _, text = summarize(rows, info)
    print(f"{cpus} CPUs, Python {doc['python']}, kernel {doc['kernel']}, scale {doc['scale']}, "
          f"median of {doc.get('rounds_done', 0)} rounds; start-up {doc['startup_s']:.3f} s")
    print(text)
    print(f"results: {path}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
