"""The workers' fork server: when the CLI starts it early, and that the backup then uses it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.pipeline import forkserver
from dsbackup.pipeline.scanchoice import PARALLEL_MIN_BYTES, likely_parallel

SRC = str(Path(forkserver.__file__).resolve().parents[2])


def test_prestart_is_decided_by_the_environment_then_the_cpu_count(monkeypatch):
    monkeypatch.setattr(forkserver, "_usable_cpus", lambda: 16)
    monkeypatch.delenv("DSBACKUP_PRESTART", raising=False)
    assert forkserver.prestart_wanted()
    monkeypatch.setenv("DSBACKUP_PRESTART", "0")
    assert not forkserver.prestart_wanted()
    monkeypatch.setattr(forkserver, "_usable_cpus", lambda: 2)
    monkeypatch.setenv("DSBACKUP_PRESTART", "1")
    assert forkserver.prestart_wanted()
    monkeypatch.delenv("DSBACKUP_PRESTART")
    assert not forkserver.prestart_wanted()
    monkeypatch.setattr(forkserver, "_usable_cpus", lambda: forkserver.PRESTART_MIN_CPUS)
    assert forkserver.prestart_wanted()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# A script without a __main__ guard: were it re-run in the server or a worker, it would start
# another backup there (and print twice).
SCRIPT = """
import multiprocessing.forkserver as mpfs, sys
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.pipeline import forkserver
from dsbackup.pipeline.scanchoice import PARALLEL_MIN_BYTES, likely_parallel
forkserver.prestart()
early = mpfs._forkserver._forkserver_pid
meta = BackupManager(BackupConfig(workers=2)).create_backup(sys.argv[1], sys.argv[2])
print(early, mpfs._forkserver._forkserver_pid, meta.statistics.mode, meta.total_keys)
"""


def test_a_backup_uses_the_prestarted_server_and_reruns_no_script(tmp_path):
    store = tmp_path / "src"
    n, _ = datasets.write_lmdb(str(store), datasets.iter_blocks(160, 3))  # 40 MiB: parallel
    arc = tmp_path / "a.tar.gz"
    out = subprocess.run([sys.executable, "-c", SCRIPT, f"lmdb:{store}", str(arc)],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # the script ran once
    early, used, mode, keys = lines[0].split()
    assert early != "None" and early == used  # the server started early is the one used
    assert (mode, int(keys)) == ("parallel", n)
    with ArchiveReader(arc) as r:
        assert r.chunk_count > 0


def _cli_backup(src: str, arc: Path, prestart: str, mark: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsbackup", "-vv", "backup", "--workers", "2", src, str(arc)],
        # the fork server's path: without a zygote (tests/pipeline/test_zygote.py)
        env=_env(DSBACKUP_PRESTART=prestart, DSBACKUP_TEST_MARK=mark, DSBACKUP_ZYGOTE="0"),
        capture_output=True, text=True, timeout=120)


def _processes_marked(mark: str) -> list[int]:
    found = []
    needle = f"DSBACKUP_TEST_MARK={mark}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("blocks", [160, 4])  # 40 MiB: parallel scan; 1 MiB: central
def test_cli_prestarts_for_a_parallel_scan_and_the_archive_is_the_same(tmp_path, blocks):
    store = tmp_path / "src"
    datasets.write_lmdb(str(store), datasets.iter_blocks(blocks, 4))
    digests = []
    for prestart in ("1", "0"):
        mark = uuid.uuid4().hex
        arc = tmp_path / f"p{prestart}.tar.gz"
        res = _cli_backup(f"lmdb:{store}", arc, prestart, mark)
        assert res.returncode == 0, res.stderr
        early = re.search(r"fork server (\d+) started early", res.stderr)
        used = re.search(r"forked from fork server (\d+)", res.stderr)
        if blocks == 160:
            assert used is not None, res.stderr
            # with prestart, the workers come from the server started early
            assert (early is not None and early[1] == used[1]) == (prestart == "1"), res.stderr
        else:
            assert early is None and used is None, res.stderr  # nothing started in vain
        with ArchiveReader(arc) as r:
            digests.append([e.member_xxh3 for e in r.index.entries()])
        # the server goes with the CLI
        deadline = time.monotonic() + 10
        while _processes_marked(mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _processes_marked(mark)
    assert digests[0] == digests[1] and digests[0]


def test_cli_starts_no_server_for_an_incremental_backup(tmp_path):
    store = tmp_path / "src"
    datasets.write_lmdb(str(store), datasets.iter_blocks(160, 5))  # 40 MiB
    full = tmp_path / "full.tar.gz"
    assert _cli_backup(f"lmdb:{store}", full, "1", uuid.uuid4().hex).returncode == 0
    res = subprocess.run(
        [sys.executable, "-m", "dsbackup", "-vv", "backup", "--parent", str(full),
         f"lmdb:{store}", str(tmp_path / "inc.tar.gz")],
        env=_env(DSBACKUP_PRESTART="1"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "started early" not in res.stderr and "forked from" not in res.stderr, res.stderr
    assert "zygote" not in res.stderr, res.stderr  # no workers: none forked in vain


def test_likely_parallel_guesses_from_file_sizes(tmp_path):
    big, small = tmp_path / "big", tmp_path / "small"
    for path, size in ((big, PARALLEL_MIN_BYTES), (small, PARALLEL_MIN_BYTES - 1)):
        path.mkdir()
        with open(path / "data.mdb", "wb") as f:
            f.truncate(size)
    assert likely_parallel(f"lmdb:{big}") and likely_parallel(str(big))  # scheme or detected
    assert not likely_parallel(f"lmdb:{small}") and not likely_parallel(str(small))
    db = tmp_path / "s.sqlite"
    with open(db, "wb") as f:
        f.write(b"SQLite format 3\x00")
        f.truncate(PARALLEL_MIN_BYTES)
    assert likely_parallel(f"sqlite:{db}") and likely_parallel(str(db))
    (tmp_path / "ffs").mkdir()
    (tmp_path / "ffs" / "SHARDING").write_text("/repo/flatfs/shard/v1/next-to-last/2\n")
    assert likely_parallel(str(tmp_path / "ffs"))  # flatfs is not sized: assumed large
    assert not likely_parallel(f"leveldb:{big}")  # central scan whatever its size
    assert not likely_parallel("memory:")
    assert not likely_parallel(str(tmp_path / "missing"))


def test_prestart_workers_only_for_a_full_parallel_dsbackup_backup(tmp_path, monkeypatch):
    from dsbackup import prestart_workers

    started = []
    monkeypatch.setattr(forkserver, "prestart", lambda: started.append(1))
    monkeypatch.setenv("DSBACKUP_PRESTART", "1")
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "data.mdb", "wb") as f:
        f.truncate(PARALLEL_MIN_BYTES)
    src = f"lmdb:{big}"
    assert not prestart_workers(src, workers=1)
    assert not prestart_workers(src, incremental=True)
    assert not prestart_workers(src, format="go")
    assert not prestart_workers(f"lmdb:{tmp_path / 'missing'}")
    assert started == []
    assert prestart_workers(src, workers=4)
    assert started == [1]
    monkeypatch.setenv("DSBACKUP_PRESTART", "0")
    assert not prestart_workers(src, workers=4)


def test_start_context_from_two_threads_restores_main_and_pythonpath(monkeypatch):
    """Two backups starting their workers side by side (a library caller's threads): each
    start_context restored what the other had set, so __main__ stayed an empty module and
    PYTHONPATH stayed changed after both were done."""
    import threading

    monkeypatch.setenv("PYTHONPATH", "/caller/path")
    main = sys.modules["__main__"]
    inside = threading.Event()

    def first() -> None:
        with forkserver.start_context():
            inside.set()
            time.sleep(0.2)  # the other thread starts its workers meanwhile

    def second() -> None:
        inside.wait(5)
        with forkserver.start_context():
            time.sleep(0.4)  # and ends after the first
            assert os.environ["PYTHONPATH"].endswith(os.pathsep + "/caller/path")

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sys.modules["__main__"] is main
    assert os.environ["PYTHONPATH"] == "/caller/path"


_FORK_SCRIPT = """
import os, sys
from dsbackup import BackupConfig, BackupManager
mgr = BackupManager(BackupConfig(workers=2))
print("parent", mgr.create_backup(sys.argv[1], sys.argv[2] + ".p").statistics.mode, flush=True)
pid = os.fork()
if pid == 0:
    try:
        meta = BackupManager(BackupConfig(workers=2)).create_backup(sys.argv[1], sys.argv[2] + ".c")
        print("child", meta.statistics.mode, meta.total_keys, flush=True)
    except BaseException as exc:
        print("child failed:", type(exc).__name__, exc, flush=True)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
meta = mgr.create_backup(sys.argv[1], sys.argv[2] + ".q")  # the parent's server still serves
print("after", os.waitstatus_to_exitcode(status), meta.statistics.mode, flush=True)
"""


def test_a_backup_in_a_process_forked_after_a_parallel_backup(tmp_path):
    """A program that forks after a parallel backup (a pre-fork server, a job runner): the
    child inherited multiprocessing's record of the parent's fork server, whose pid is not
    the child's child, so its next parallel backup failed with '[Errno 10] No child
    processes'."""
    store = tmp_path / "src"
    n, _ = datasets.write_lmdb(str(store), datasets.iter_blocks(160, 3))  # 40 MiB: parallel
    out = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, f"lmdb:{store}",
                          str(tmp_path / "a.tar.gz")],
                         env=_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["parent parallel", f"child parallel {n}",
                                       "after 0 parallel"], out.stdout
