"""Peak memory is bounded: backup, restore, verify and ls of an 8× larger store take the same
peak RSS (issue 21: within 10%).

Each operation runs in a fresh process (the CLI); its peak resident set comes from wait4(2)
for restore, verify and ls, and for the backup from the archive summary (the CLI process and
its largest scan worker, which the fork server starts, not the CLI). Scale with
DSBACKUP_BENCH_SCALE (1.0 = 1 GiB and 8 GiB of 256 KiB blocks; 0.5 = 0.5 and 4 GiB, which
needs ~8 GiB of disk at a time). `--paged` sets a small index page
(DSBACKUP_TEST_PAGE_ENTRIES=256) so both archives have a paged index (docs/FORMAT.md §11.3)
whose page count grows 8×; without it the default (`auto`: paged above 4096 chunks) decides.

    python benchmarks/memory_bound.py [--paged] [--factor 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsbackup import datasets  # noqa: E402
from dsbackup.archive.reader import ArchiveReader  # noqa: E402


def _env(paged: bool) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if paged:
        env["DSBACKUP_TEST_PAGE_ENTRIES"] = "256"
    return env


def backup_rss(src: Path, out: Path, workers: int, env: dict[str, str],
               ) -> tuple[int, int, float]:
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(out),
                        "--workers", str(workers), "--json"], env=env, capture_output=True,
                       text=True, check=True)
    duration = json.loads(r.stdout)["backup"]["statistics"]["duration_s"]
    with ArchiveReader(out) as a:
        s = a.summary
    return s["peak_rss_bytes"], s["worker_peak_rss_bytes"], duration


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cli_rss(args: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Peak RSS of `dsbackup ARGS` from wait4(2), and its peak anonymous RSS (sampled every
    10 ms from /proc: without the file pages an LMDB restore maps, which the kernel may drop
    and which grow with the data written)."""
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    anon = 0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        anon = max(anon, _anon_kib(p.pid))
        time.sleep(0.01)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"dsbackup {' '.join(args)} failed ({p.returncode})")
    return usage.ru_maxrss * 1024, anon * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paged", action="store_true")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    scale = float(os.environ.get("DSBACKUP_BENCH_SCALE", "1"))
    workers = int(os.environ.get("DSBACKUP_BENCH_WORKERS", "2"))
    env = _env(a.paged)
    small_blocks = max(64, int(4096 * scale))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsbackup-mem-", dir=a.dir) as d:
        for factor in (1, a.factor):
            n = small_blocks * factor
            src = Path(d) / f"src{factor}"
            arc = Path(d) / f"a{factor}.tar.gz"
            # generated in a child process: a child's peak RSS starts from its parent's
            subprocess.run([sys.executable, "-c", "import sys; from dsbackup import datasets; "
                            "datasets.write_lmdb(sys.argv[1], datasets.iter_blocks("
                            "int(sys.argv[2]), seed=int(sys.argv[3])))", str(src), str(n),
                            str(factor)], env=env, check=True)
            parent, worker, dur = backup_rss(src, arc, workers, env)
            shutil.rmtree(src)  # room for the restore
            with ArchiveReader(arc) as r:
                chunks, pages = r.chunk_count, (r.index.page_count if r.paged else 0)
            row = {"blocks": n, "chunks": chunks, "pages": pages, "backup": parent,
                   "backup_worker": worker, "backup_s": dur}
            for op, args in (("restore", ["restore", str(arc), f"lmdb:{Path(d) / 'dst'}"]),
                             ("verify", ["verify", str(arc)]), ("ls", ["ls", str(arc)])):
                row[op], row[op + "_anon"] = cli_rss(args, env)
                if op == "restore":
                    shutil.rmtree(Path(d) / "dst")
            arc.unlink()
            rows.append(row)
            print(f"{n * datasets.BLOCK_SIZE / 2**30:6.2f} GiB, {chunks} chunks, {pages} "
                  f"index pages, {dur:.1f} s backup. Peak RSS MiB (anonymous): backup "
                  f"{parent / 2**20:.1f} + worker {worker / 2**20:.1f}, " + ", ".join(
                      f"{op} {row[op] / 2**20:.1f} ({row[op + '_anon'] / 2**20:.1f})"
                      for op in ("restore", "verify", "ls")), flush=True)
    small, large = rows
    for r in rows:  # a small store is backed up centrally (no worker), a large one in parallel
        r["backup_total"] = r["backup"] + workers * r["backup_worker"]
    worst, worst_op = 0.0, ""
    for op in ("backup_total", "restore", "restore_anon", "verify", "verify_anon", "ls",
               "ls_anon"):
        ratio = large[op] / small[op] if small[op] else float("nan")
        if op != "restore" and abs(ratio - 1) > worst:  # a restore's RSS counts the LMDB
            worst, worst_op = abs(ratio - 1), op           # file pages it mapped: anon only
        print(f"{op:14} {a.factor}x store / 1x store peak: {ratio:.3f}")
    print(f"largest deviation {worst:.3f}, {worst_op} (bound: 0.10; restore counted by its "
          "anonymous memory)")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
