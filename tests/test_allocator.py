"""single_arena: threads' allocations come from the main arena (no per-thread heaps), the
restore's setting for a flat peak (docs/PERFORMANCE.md, "Memory flat in store size")."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

_PROBE = r"""
import sys, threading
from dsbackup.allocator import single_arena, tune_allocator
tune_allocator()
if sys.argv[1] == "one":
    assert single_arena()
keep = []
def work():
    keep.append([bytearray(300_000) for _ in range(8)])
ts = [threading.Thread(target=work) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
# glibc's per-thread heaps are mappings aligned to 64 MiB (HEAP_MAX_SIZE)
n = 0
for line in open("/proc/self/maps"):
    f = line.split()
    lo = int(f[0].split("-")[0], 16)
    if len(f) == 5 and lo % (64 << 20) == 0 and f[1] == "rw-p":
        n += 1
print(n)
"""


def _thread_heaps(mode: str) -> int:
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("DSBACKUP_NO_MALLOPT", None)
    env.pop("MALLOC_ARENA_MAX", None)
    r = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True,
                       text=True, check=True)
    return int(r.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas")
def test_single_arena_keeps_threads_in_the_main_arena():
    assert _thread_heaps("default") >= 1  # the probe does see per-thread heaps
    assert _thread_heaps("one") == 0


def test_single_arena_is_left_alone_when_asked(monkeypatch):
    import dsbackup.allocator as allocator

    monkeypatch.setattr(allocator, "_one_arena", False)
    monkeypatch.setenv("DSBACKUP_NO_MALLOPT", "1")
    assert allocator.single_arena() is False


_LIBRARY_PROBE = r"""
import sys
from dsbackup import BackupConfig, BackupManager, open_datastore
import dsbackup.allocator as allocator
with open_datastore("flatfs:" + sys.argv[1]) as ds:
    ds.put_many([b"/CIQA%04d" % i for i in range(64)], [b"v" * 300_000] * 64)
mgr = BackupManager(BackupConfig(workers=1))
mgr.create_backup("flatfs:" + sys.argv[1], sys.argv[2])
assert mgr.verify_backup(sys.argv[2]).ok
mgr.restore_backup(sys.argv[2], "lmdb:" + sys.argv[3])
print(allocator._done, allocator._one_arena)
"""


def test_a_library_caller_keeps_its_malloc_settings(tmp_path):
    """A process using dsbackup as a library keeps its allocator settings: the flatfs scan
    (here in the caller's process, one worker) set the CLI's 256 MiB trim threshold and
    32 MiB mmap threshold for its host, which then kept freed heap it had returned before
    (78 -> 99 MiB RSS over 10 rounds of backup + restore + verify of 150 MB in threads,
    against 28 -> 33; docs/PERFORMANCE.md, "Memory over rounds in one process")."""
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("DSBACKUP_NO_MALLOPT", None)
    r = subprocess.run([sys.executable, "-c", _LIBRARY_PROBE, str(tmp_path / "ff"),
                        str(tmp_path / "a.tar.gz"), str(tmp_path / "out")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"], r.stdout
