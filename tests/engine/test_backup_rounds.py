"""Many rounds of backup + restore + verify in threads of one process, as a library caller
or the scheduler daemon runs them: nothing accumulates (docs/PERFORMANCE.md, "Memory over
rounds in one process"; benchmarks/memory_rounds.py measures the RSS curve)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")

_ROUNDS = r"""
import gc, json, os, shutil, sys, threading, tracemalloc
from dsbackup import BackupConfig, BackupManager, open_datastore

tmp = sys.argv[1]
with open_datastore("lmdb:" + tmp + "/src") as ds:
    ds.put_many([b"/blocks/K%05d" % i for i in range(3000)],
                [os.urandom(64) + b"v%d" % i * 20 for i in range(3000)])
mgr = BackupManager(BackupConfig(workers=2, include_metadata=True))

def in_thread(fn, *args):
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]

tracemalloc.start()
rows = []
for r in range(int(sys.argv[2])):
    arch = tmp + "/a.tar.gz"
    in_thread(mgr.create_backup, "lmdb:" + tmp + "/src", arch)
    assert in_thread(mgr.restore_backup, arch, "lmdb:" + tmp + "/dst").records_written == 3000
    assert in_thread(mgr.verify_backup, arch).ok
    shutil.rmtree(tmp + "/dst")
    os.unlink(arch)
    gc.collect()
    envs = sum(1 for o in gc.get_objects() if type(o).__name__ == "Environment")
    rows.append([tracemalloc.get_traced_memory()[0], threading.active_count(),
                 len(os.listdir("/proc/self/fd")), envs])
print(json.dumps(rows))
"""


def test_rounds_in_threads_accumulate_nothing(tmp_path):
    """20 rounds in one process: the Python heap, threads, descriptors and LMDB environments
    stay where the fourth round left them (the first rounds import, compile and warm the
    caches). Measured (40 rounds, 150 MB): the Python heap flat, RSS a plateau by round 5-15
    set by glibc's arenas, not a leak."""
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run([sys.executable, "-c", _ROUNDS, str(tmp_path), "20"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.splitlines()[-1])
    py = [row[0] for row in rows]
    assert max(py[3:]) - py[3] < 256 << 10, py  # Python objects: no growth per round
    assert {row[1] for row in rows} == {1}, rows  # no thread left behind
    assert max(row[2] for row in rows) <= rows[3][2] + 4, rows  # descriptors bounded
    assert {row[3] for row in rows} == {0}, rows  # every LMDB environment closed
