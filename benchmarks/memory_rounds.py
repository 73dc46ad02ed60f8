"""RSS of one long-lived process over N rounds of backup + restore + verify run in threads,
as a library caller or the scheduler daemon runs them (docs/PERFORMANCE.md, "Memory over
rounds in one process").

    PYTHONPATH=src python benchmarks/memory_rounds.py --rounds 40 --out R.json [--scheduler]
        [--records 150000 | --records 600 --value-size 262144] [--flatfs] [--workers 0]
        [--tracemalloc] [--trim | --one-arena | --tune-only | --cli-tuning]

Per round: RSS and anonymous memory (/proc/self/smaps_rollup), malloc arenas and the bytes
they hold (malloc_info), descriptors, threads, live LMDB environments, and with --tracemalloc
the Python heap and the lines that grew most between round 2 and the last. --workers 0: the
default (CPU count).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time


def smaps() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2)) * 1024
    return out


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def malloc_info() -> dict[str, int]:
    """Arena count and the bytes glibc's arenas hold from the system (malloc_info(3))."""
    fd, fn = tempfile.mkstemp()
    os.close(fd)
    _libc.fopen.restype = ctypes.c_void_p
    _libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    _libc.fclose.argtypes = [ctypes.c_void_p]
    _libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fp = _libc.fopen(fn.encode(), b"w")
    _libc.malloc_info(0, fp)
    _libc.fclose(fp)
    with open(fn) as f:
        xml = f.read()
    os.unlink(fn)
    heaps = re.findall(r'<heap nr="\d+">(.*?)</heap>', xml, re.S)
    tail = xml.rsplit("</heap>", 1)[-1]
    cur = re.search(r'<system type="current" size="(\d+)"/>', tail)
    free = re.search(r'<total type="fast" count="\d+" size="(\d+)"/>', tail)
    rest = re.search(r'<total type="rest" count="\d+" size="(\d+)"/>', tail)
    mm = re.search(r'<total type="mmap" count="\d+" size="(\d+)"/>', tail)
    return {"arenas": len(heaps), "system_current": int(cur.group(1)) if cur else -1,
            "free_bytes": (int(free.group(1)) if free else 0) + (int(rest.group(1)) if rest else 0),
            "mmap_bytes": int(mm.group(1)) if mm else 0}


def in_thread(fn, *args, **kw):
    box = {}

    def run():
        try:
            box["r"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            box["e"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["r"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--value-size", type=int, default=0, help="random values of this size")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--flatfs", action="store_true", help="a flatfs source (else LMDB)")
    ap.add_argument("--scheduler", action="store_true", help="rounds via BackupScheduler")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--trim", action="store_true", help="malloc_trim(0) after each round")
    ap.add_argument("--one-arena", action="store_true", help="mallopt(M_ARENA_MAX, 1) first")
    ap.add_argument("--cli-tuning", action="store_true", help="the CLI's mallopt settings")
    ap.add_argument("--dump-smaps", help="copy /proc/self/smaps to DIR/smaps.ROUND")
    ap.add_argument("--tune-only", action="store_true",
                    help="tune_allocator() alone, as `dsbackup schedule` had it")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.one_arena:
        _libc.mallopt(-8, 1)
    if a.cli_tuning:
        from dsbackup.allocator import single_arena, tune_allocator
        tune_allocator()
        single_arena()
    if a.tune_only:
        from dsbackup.allocator import tune_allocator
        tune_allocator()
    if a.tracemalloc:
        import tracemalloc
        tracemalloc.start(8)
    from dsbackup import BackupConfig, BackupManager, open_datastore

    tmp = tempfile.mkdtemp(prefix="memrounds-")
    src = os.path.join(tmp, "src")
    src_uri = ("flatfs:" if a.flatfs else "lmdb:") + src
    with open_datastore(src_uri) as ds:
        n = a.records
        for i in range(0, n, 5000):
            ks = [(b"/CIQK%08d" if a.flatfs else b"/blocks/K%08d") % j
                  for j in range(i, min(n, i + 5000))]
            if a.value_size:
                vs = [os.urandom(a.value_size) for _ in ks]
            else:
                vs = [os.urandom(256) + (b"v%d" % j) * 100 for j in range(i, i + len(ks))]
            ds.put_many(ks, vs)
            del vs
    cfg = BackupConfig(workers=a.workers or None, include_metadata=True)
    mgr = BackupManager(cfg)
    sched = None
    if a.scheduler:
        from dsbackup import BackupScheduler, RetentionPolicy, ScheduledBackup, SchedulerConfig
        sched = BackupScheduler(SchedulerConfig(
            default_backup_dir=os.path.join(tmp, "arch"), state_path=os.path.join(tmp, "state"),
            retention_policy=RetentionPolicy(keep_last=2)))
        sched.add_schedule(ScheduledBackup(id="n", name="n", schedule="30 2 * * *",
                                           source=src_uri,
                                           backup_config={"workers": a.workers} if a.workers else {}))
    rows = []
    snap0 = None
    for r in range(1, a.rounds + 1):
        t0 = time.perf_counter()
        arch = os.path.join(tmp, "a.tar.gz")
        if sched is not None:
            rec = in_thread(sched.execute_backup, "n")
            assert rec.ok, rec.error
            arch = rec.archive
        else:
            in_thread(mgr.create_backup, src_uri, arch)
        tgt = os.path.join(tmp, "restored")
        res = in_thread(mgr.restore_backup, arch, "lmdb:" + tgt)
        assert res.records_written == a.records, res
        rep = in_thread(mgr.verify_backup, arch)
        assert rep.ok, rep.errors
        shutil.rmtree(tgt)
        if sched is None:
            os.unlink(arch)
        gc.collect()
        if a.trim:
            _libc.malloc_trim(0)
        sm = smaps()
        row = {"round": r, "rss": sm["Rss"], "anon": sm.get("Anonymous", 0),
               "seconds": round(time.perf_counter() - t0, 3),
               "threads": threading.active_count(), "fds": len(os.listdir("/proc/self/fd"))}
        row.update(malloc_info())
        if a.tracemalloc:
            import tracemalloc
            row["py_traced"] = tracemalloc.get_traced_memory()[0]
            if r == 2:  # snapshots only twice: each is a large list of Python objects
                snap0 = tracemalloc.take_snapshot()
            elif r == a.rounds and snap0 is not None:
                top = tracemalloc.take_snapshot().compare_to(snap0, "traceback")[:8]
                row["top_growth"] = [
                    {"size_diff": s.size_diff, "count_diff": s.count_diff,
                     "where": [str(f) for f in s.traceback.format()[-6:]]} for s in top]
        row["lmdb_envs"] = sum(1 for o in gc.get_objects() if type(o).__name__ == "Environment")
        if a.dump_smaps:
            shutil.copyfile("/proc/self/smaps", os.path.join(a.dump_smaps, f"smaps.{r}"))
        rows.append(row)
        print(f"round {r:3d} rss {row['rss'] / 2**20:6.1f} anon {row['anon'] / 2**20:6.1f} "
              f"arenas {row['arenas']} sys {row['system_current'] / 2**20:6.1f} "
              f"free {row['free_bytes'] / 2**20:6.1f} py {row.get('py_traced', 0) / 2**20:5.1f}"
              f" envs {row['lmdb_envs']} thr {row['threads']} fds {row['fds']} {row['seconds']}s", flush=True)
    if rows and "top_growth" in rows[-1]:
        for g in rows[-1]["top_growth"]:
            print(g["size_diff"], g["count_diff"], " | ".join(g["where"][-3:]))
    if sched is not None:
        sched.close()
    shutil.rmtree(tmp)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"argv": sys.argv[1:], "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
