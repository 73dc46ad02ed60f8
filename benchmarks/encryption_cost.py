"""The cost of ``--encrypt``: backup and restore, plain and encrypted, interleaved, medians.

Usage: python benchmarks/encryption_cost.py [--datasets blocks,small] [--rounds 9]
       [--workers 2] [--before SRC] [--json FILE]

Each row is a ``python -m dsbackup`` child timed for wall time and CPU time (user + system of
the child and of every process it started: this script is their subreaper, so the fork
server and the workers it forked are waited for here too; ``os.wait4``). CPU time is the
steadier number on a shared machine. Rounds run plain, encrypted, ... with the order
rotated every round (reversed, with two rows); each round's encrypted/plain ratio is taken
from rows that ran next to each other. A raw key file is used, so no row pays scrypt (docs/ENCRYPTION.md).
``--reuse-target``: restores go into one LMDB store emptied between them rather than deleted
(the VM's fresh page-cache pages made single restore times swing by up to 4x).
``--before SRC``: also time an encrypted backup (and with ``--before-restore`` a restore) with
the ``src`` directory SRC (another checkout, its extension built), to compare two versions of
the sealing path in the same run.
Data sets: benchdata.py (scale with DSBACKUP_BENCH_SCALE).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))


def _subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux PR_SET_CHILD_SUBREAPER),
    so that the fork server and the workers it forked are waited for here and their CPU time
    counts; False where that is not possible."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one child and every process it started (workers included, when
    this process is a subreaper: they are waited for here once the child has ended)."""
    subprocess.run(["sync"], check=True)
    with tempfile.TemporaryFile() as errf:  # not a pipe: the fork server may keep it open
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errf)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = ru.ru_utime + ru.ru_stime
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # orphans: the fork server (its workers' time)
            try:
                pid, _, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
                continue
            cpu += ru.ru_utime + ru.ru_stime
        errf.seek(0)
        err = errf.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {err[-400:]}")
    return wall, cpu


def _empty_lmdb(path: Path) -> None:
    """Delete every record of the LMDB store at `path`, keeping its file (and its pages)."""
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 36)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(txn=txn), delete=False)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="blocks,small")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--before", type=Path, default=None,
                    help="the src directory of another version: its encrypted rows too")
    ap.add_argument("--before-restore", action="store_true",
                    help="with --before: also time its restore (the same code unless the "
                    "reader changed)")
    ap.add_argument("--reuse-target", action="store_true",
                    help="empty the restore target between restores instead of deleting it: "
                    "its file's page-cache pages are reused, so the VM's cost of fresh pages "
                    "(docs/PERFORMANCE.md, \"why single restore times swing\") stays out of "
                    "the restore rows")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import benchdata

    if not _subreaper():
        print("not a subreaper: CPU times leave out the worker processes", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="dsbackup-enccost-"))
    key = work / "bench.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    versions = {"": str(ROOT / "src")}
    if args.before is not None:
        versions[" (before)"] = str(args.before.resolve())
    for src in versions.values():  # byte-compiled as an installed package is, even where
        # PYTHONDONTWRITEBYTECODE is set (else every CLI run compiles its modules: ~0.1 s)
        compileall.compile_dir(str(Path(src) / "dsbackup"), quiet=1)
    py = [sys.executable, "-m", "dsbackup"]
    w = ["--workers", str(args.workers)]
    results: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "scale": benchdata.scale(), "workers": args.workers,
                     "rounds": args.rounds, "loadavg_start": os.getloadavg(), "datasets": {}}
    try:
        for name in args.datasets.split(","):
            d = benchdata.blocks_lmdb() if name == "blocks" else benchdata.small_lmdb()
            rows: dict[str, tuple[list[str], Path, str]] = {}
            for suffix, src in versions.items():
                enc = ["--encrypt", "--key-file", str(key)]
                arc = work / f"{name}-enc{suffix.strip(' ()')}.tar.gz"
                if not suffix:
                    plain = work / f"{name}-plain.tar.gz"
                    rows["backup plain"] = (py + ["backup", *w, d.uri, str(plain)], plain, src)
                rows[f"backup encrypted{suffix}"] = (py + ["backup", *w, *enc, d.uri, str(arc)],
                                                     arc, src)
            restores: dict[str, tuple[list[str], Path, str]] = {}
            for label, (_cmd, arc, src) in rows.items():
                if "(before)" in label and not args.before_restore:
                    continue
                dst = work / f"{name}-restored"
                extra = ["--key-file", str(key)] if "encrypted" in label else []
                restores[label.replace("backup", "restore")] = (
                    py + ["restore", *w, *extra, str(arc), f"lmdb:{dst}"], dst, src)
            samples: dict[str, list[tuple[float, float]]] = {k: [] for k in [*rows, *restores]}
            for r in range(args.rounds):
                for phase in (rows, restores):
                    # rotated every round: with two rows the order reverses, with three (a
                    # --before row) each row takes each place in turn
                    keys = list(phase)
                    order = keys[r % len(keys):] + keys[:r % len(keys)] if keys else keys
                    if phase is restores and order:
                        # untimed: the first restore after the backups writes into page cache
                        # the VM has just handed back to its host (free page reporting) and
                        # took ~3x the others; this one pays that, the timed rows then reuse
                        # the pages it frees (docs/PERFORMANCE.md, "why single restore times
                        # swing")
                        cmd, out, src = phase[order[0]]
                        if args.reuse_target and out.is_dir():
                            _empty_lmdb(out)
                        else:
                            shutil.rmtree(out, ignore_errors=True)
                        run(cmd, dict(os.environ, PYTHONPATH=src))
                    for label in order:
                        cmd, out, src = phase[label]
                        if out.is_dir() and phase is restores and args.reuse_target:
                            _empty_lmdb(out)
                        elif out.is_dir():
                            shutil.rmtree(out)
                        else:
                            out.unlink(missing_ok=True)
                        env = dict(os.environ, PYTHONPATH=src)
                        samples[label].append(run(cmd, env))
                        wall, cpu = samples[label][-1]
                        print(f"  round {r + 1}: {name:6} {label:28} {wall:7.3f} s wall "
                              f"{cpu:7.3f} s CPU", file=sys.stderr, flush=True)
                if not args.reuse_target:
                    shutil.rmtree(work / f"{name}-restored", ignore_errors=True)
            shutil.rmtree(work / f"{name}-restored", ignore_errors=True)
            out: dict = {"records": d.records, "raw_bytes": d.raw_bytes, "rows": {},
                         "ratios": {}}
            for label, s in samples.items():
                out["rows"][label] = {"wall": statistics.median(x for x, _ in s),
                                      "cpu": statistics.median(c for _, c in s),
                                      "wall_all": [x for x, _ in s], "cpu_all": [c for _, c in s]}
            for label, s in samples.items():
                op = label.split()[0]
                if "encrypted" not in label:
                    continue
                base = samples[f"{op} plain"]
                for i, what in ((0, "wall"), (1, "cpu")):
                    per = [a[i] / b[i] for a, b in zip(s, base)]
                    out["ratios"][f"{label} / plain {what}"] = {
                        "median_of_rounds": statistics.median(per),
                        "of_medians": statistics.median(a[i] for a in s)
                        / statistics.median(b[i] for b in base),
                        "per_round": per}
            results["datasets"][name] = out
            for k, v in out["ratios"].items():
                print(f"{name:6} {k:44} {v['of_medians']:.3f} (median of rounds "
                      f"{v['median_of_rounds']:.3f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print(f"load average: start {results['loadavg_start']}, end {results['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
