"""Peak memory is bounded: backup, restore, verify and ls of an 8× larger store take the same
peak RSS (issue 21: within 10%).

Each operation runs in a fresh process (the CLI); its peak resident set comes from wait4(2)
for restore, verify and ls, and for the backup from the archive summary (the CLI process and
its largest scan worker, which the fork server starts, not the CLI). Scale with
DSBACKUP_BENCH_SCALE (1.0 = 1 GiB and 8 GiB of 256 KiB blocks; 0.5 = 0.5 and 4 GiB, which
needs ~8 GiB of disk at a time). `--paged` sets a small index page
(DSBACKUP_TEST_PAGE_ENTRIES=256) so both archives have a paged index (docs/FORMAT.md §11.3)
whose page count grows 8×; without it the default (`auto`: paged above 4096 chunks) decides.

The backup's tree (CLI, fork server, scan workers) is also sampled from /proc every 20 ms: the
anonymous peak of the CLI and of its largest other process (`backup_anon`, `worker_anon`),
which leave out the store's and the slot file's mapped pages that a worker's `ru_maxrss`
counts. `--store flatfs` generates a flatfs store (`/blocks` keys without the prefix) and
restores into flatfs. `--unsorted` writes the generated records in generation order (LMDB
sorts them itself; the default sorts them in memory, which needs the store's size in RAM).
`--paged-index always` passes that to the backup (both archives paged, default page size).
`--json PATH` writes the rows (with each operation's wall and CPU seconds and the disk used).

    python benchmarks/memory_bound.py [--paged] [--factor 8] [--store lmdb|flatfs]
        [--unsorted] [--paged-index auto|always|never] [--backup-only] [--dir DIR]
        [--json PATH]
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


def backup_rss(src_uri: str, out: Path, workers: int, env: dict[str, str],
               extra: list[str]) -> dict:
    """Back up `src_uri`: the summary's peak RSS (CLI, largest worker), the anonymous peaks
    sampled from /proc (CLI, largest other process of its tree), wall and CPU seconds."""
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", src_uri, str(out),
                          "--workers", str(workers), "--json", *extra], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    chunks: list[bytes] = []
    os.set_blocking(p.stdout.fileno(), False)
    cli_anon = other_anon = 0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        for q in _tree(p.pid):
            if q == p.pid:
                cli_anon = max(cli_anon, _anon_kib(q))
            else:
                other_anon = max(other_anon, _anon_kib(q))
        try:
            b = p.stdout.read()
            if b:
                chunks.append(b)
        except BlockingIOError:
            pass
        time.sleep(0.02)
    wall = time.monotonic() - t
    os.set_blocking(p.stdout.fileno(), True)
    chunks.append(p.stdout.read() or b"")
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"dsbackup backup {src_uri} failed ({p.returncode})")
    duration = json.loads(b"".join(chunks))["backup"]["statistics"]["duration_s"]
    with ArchiveReader(out) as a:
        s = a.summary
    return {"backup": s["peak_rss_bytes"], "backup_worker": s["worker_peak_rss_bytes"],
            "backup_s": duration, "backup_wall_s": wall,
            "backup_cpu_s": usage.ru_utime + usage.ru_stime,
            "backup_anon": cli_anon * 1024, "backup_worker_anon": other_anon * 1024}


def generate(uri: str, n: int, seed: int, unsorted: bool, env: dict[str, str]) -> float:
    """Write `n` blocks into a new store at `uri` in a child process (a child's peak RSS starts
    from its parent's); returns the seconds taken."""
    code = ("import sys; from dsbackup import datasets; from dsbackup.datastores import "
            "open_datastore\n"
            "uri, n, seed, unsorted = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "
            "sys.argv[4] == '1'\n"
            "recs = datasets.iter_blocks(n, seed=seed)\n"
            "if uri.startswith('lmdb:'):\n"
            "    datasets.write_lmdb(uri[5:], recs, sort=not unsorted)\n"
            "else:\n"
            "    with open_datastore(uri) as ds:\n"
            "        ks, vs = [], []\n"
            "        for k, v in recs:\n"
            "            ks.append(k[len(b'/blocks'):]); vs.append(v)\n"
            "            if len(ks) >= 256:\n"
            "                ds.put_many(ks, vs); ks, vs = [], []\n"
            "        if ks:\n"
            "            ds.put_many(ks, vs)\n")
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", code, uri, str(n), str(seed),
                    "1" if unsorted else "0"], env=env, check=True)
    return time.monotonic() - t


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under `path` (du)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/PID/task/TID/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cli_rss(args: list[str], env: dict[str, str]) -> tuple[int, int, float, float]:
    """Peak RSS of `dsbackup ARGS` from wait4(2), and its peak anonymous RSS (sampled every
    10 ms from /proc: without the file pages an LMDB restore maps, which the kernel may drop
    and which grow with the data written); wall and CPU seconds."""
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    anon = 0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        anon = max(anon, _anon_kib(p.pid))
        time.sleep(0.01)
    wall = time.monotonic() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"dsbackup {' '.join(args)} failed ({p.returncode})")
    return usage.ru_maxrss * 1024, anon * 1024, wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paged", action="store_true")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--store", choices=("lmdb", "flatfs"), default="lmdb")
    ap.add_argument("--unsorted", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--backup-only", action="store_true",
                    help="measure the backup alone (no restore, verify or ls)")
    ap.add_argument("--paged-index", default=None, choices=("auto", "always", "never"),
                    help="the backup's --paged-index (default: the CLI's, auto)")
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
            dst = Path(d) / "dst"
            arc = Path(d) / f"a{factor}.tar.gz"
            gen_s = generate(f"{a.store}:{src}", n, factor, a.unsorted, env)
            src_disk = disk_bytes(src)
            row = {"store": a.store, "blocks": n,
                   "gib": n * datasets.BLOCK_SIZE / 2**30, "generate_s": gen_s,
                   "store_disk_bytes": src_disk,
                   **backup_rss(f"{a.store}:{src}", arc, workers, env, [] if a.paged_index
                                is None else ["--paged-index", a.paged_index])}
            shutil.rmtree(src)  # room for the restore
            with ArchiveReader(arc) as r:
                chunks, pages = r.chunk_count, (r.index.page_count if r.paged else 0)
            row.update(chunks=chunks, pages=pages, archive_bytes=arc.stat().st_size)
            ops = [] if a.backup_only else [("restore",
                                              ["restore", str(arc), f"{a.store}:{dst}"])]
            if a.store == "lmdb" and not a.backup_only:
                ops += [("verify", ["verify", str(arc)]), ("ls", ["ls", str(arc)])]
            for op, args in ops:
                row[op], row[op + "_anon"], row[op + "_wall_s"], row[op + "_cpu_s"] = \
                    cli_rss(args, env)
                if op == "restore":
                    row["restored_disk_bytes"] = disk_bytes(dst)
                    shutil.rmtree(dst)
            arc.unlink()
            rows.append(row)
            print(f"{row['gib']:6.2f} GiB {a.store}, {chunks} chunks, {pages} index pages; "
                  f"generated {gen_s:.0f} s, store {src_disk / 2**30:.2f} GiB, archive "
                  f"{row['archive_bytes'] / 2**30:.2f} GiB; backup {row['backup_s']:.1f} s "
                  f"({row['backup_cpu_s']:.1f} CPU s in the CLI). Peak RSS MiB (anonymous): "
                  f"backup {row['backup'] / 2**20:.1f} ({row['backup_anon'] / 2**20:.1f}) + "
                  f"worker {row['backup_worker'] / 2**20:.1f} "
                  f"({row['backup_worker_anon'] / 2**20:.1f}), " + ", ".join(
                      f"{op} {row[op] / 2**20:.1f} ({row[op + '_anon'] / 2**20:.1f}) "
                      f"{row[op + '_wall_s']:.1f} s" for op, _ in ops), flush=True)
    small, large = rows
    for r in rows:  # a small store is backed up centrally (no worker), a large one in parallel
        r["backup_total"] = r["backup"] + workers * r["backup_worker"]
        r["backup_total_anon"] = r["backup_anon"] + workers * r["backup_worker_anon"]
    worst, worst_op, ratios = 0.0, "", {}
    names = ["backup_total", "backup_total_anon", "backup", "backup_anon", "backup_worker",
             "backup_worker_anon"]
    if not a.backup_only:
        names += ["restore", "restore_anon"]
    if a.store == "lmdb" and not a.backup_only:
        names += ["verify", "verify_anon", "ls", "ls_anon"]
    for op in names:
        ratio = large[op] / small[op] if small[op] else float("nan")
        ratios[op] = ratio
        # a restore's RSS counts the store file pages it mapped: anonymous only; the backup's
        # parts are in backup_total
        if op in ("backup_total", "restore_anon", "verify", "verify_anon", "ls", "ls_anon") \
                and abs(ratio - 1) > worst:
            worst, worst_op = abs(ratio - 1), op
        print(f"{op:18} {a.factor}x store / 1x store peak: {ratio:.3f}")
    print(f"largest deviation {worst:.3f}, {worst_op} (bound: 0.10; restore counted by its "
          "anonymous memory)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"scale": scale, "factor": a.factor, "workers": workers,
                       "paged": a.paged, "paged_index": a.paged_index, "store": a.store, "unsorted": a.unsorted,
                       "rows": rows, "ratios": ratios, "worst": worst, "worst_op": worst_op},
                      f, indent=1)
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
