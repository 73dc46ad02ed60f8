"""The workers' zygote (dsbackup/pipeline/zygote.py): `dsbackup backup` forks its scan workers
from a fork of itself, so no fork server and no resource tracker runs; a process with a thread
or an open LMDB environment gets no zygote (the fork server starts the workers); a killed
worker, a killed CLI, a Ctrl-C and a killed zygote leave no process and no archive behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.pipeline import zygote

SRC = str(Path(zygote.__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zygote") / "src"
    datasets.write_lmdb(str(path), datasets.iter_blocks(160, 7))  # 40 MiB: a parallel scan
    return path


def _env(mark: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DSBACKUP_ZYGOTE", None)
    env.update(DSBACKUP_TEST_MARK=mark, **extra)
    return env


def _marked(mark: str) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of the live processes started with this mark."""
    found = {}
    needle = f"DSBACKUP_TEST_MARK={mark}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            stat = (d / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue  # exited, not yet reaped
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            raw = (d / "cmdline").read_bytes()
            if not raw:
                continue  # exiting: its memory (and command line) already gone, not a zombie yet
            found[int(d.name)] = (ppid, raw.replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue
    return found


def _none_left(mark: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _marked(mark)


def _backup(store: Path, archive: Path, mark: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dsbackup", "-vv", "backup", "--workers", "2", f"lmdb:{store}",
         str(archive)], env=_env(mark, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def _wait_workers(cli: subprocess.Popen, mark: str) -> tuple[int, list[int]]:
    """(zygote pid, its workers' pids) once the CLI's zygote has forked the scan processes."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        procs = _marked(mark)
        for pid, (ppid, _) in procs.items():
            if ppid == cli.pid:
                kids = [k for k, (pp, _) in procs.items() if pp == pid]
                if len(kids) == 3:  # 2 workers and the planner
                    return pid, kids
        assert cli.poll() is None, cli.communicate()
        time.sleep(0.001)
    raise AssertionError("the workers did not start")


def _digests(path: Path) -> list[int]:
    with ArchiveReader(path) as r:
        return [e.member_xxh3 for e in r.index.entries()]


def test_the_cli_forks_its_workers_from_the_zygote_not_a_fork_server(store, tmp_path):
    """With the zygote, every process of the backup is a fork of the CLI (same command line):
    no interpreter of multiprocessing's fork server or resource tracker appears; with
    DSBACKUP_ZYGOTE=0 they do (which shows that the watch sees them). Same archive."""
    seen: dict[str, set[str]] = {}
    for setting in ("1", "0"):
        mark = uuid.uuid4().hex
        arc = tmp_path / f"z{setting}.tar.gz"
        cli = _backup(store, arc, mark, DSBACKUP_ZYGOTE=setting)
        cmds: set[str] = set()
        while cli.poll() is None:
            cmds.update(cmd for _, cmd in _marked(mark).values())
            time.sleep(0.002)
        _, err = cli.communicate()
        assert cli.returncode == 0, err
        seen[setting] = cmds
        if setting == "1":
            assert "forked from zygote" in err and "fork server" not in err, err
        else:
            assert "forked from fork server" in err and "zygote" not in err, err
        assert _none_left(mark)  # everything went with the CLI
    assert len(seen["1"]) == 1, seen["1"]  # the CLI's command line only: forks of it
    assert not any("forkserver" in c or "resource_tracker" in c for c in seen["1"])
    assert any("forkserver" in c for c in seen["0"]), seen["0"]
    assert _digests(tmp_path / "z1.tar.gz") == _digests(tmp_path / "z0.tar.gz")


SCRIPT = """
import sys, threading
from dsbackup import open_datastore
from dsbackup.pipeline import zygote
from dsbackup.pipeline.scanchoice import prestart_workers

mode, source, archive = sys.argv[1:]
if mode == "thread":
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
elif mode == "lmdb":
    ds = open_datastore(source, readonly=True)
started = prestart_workers(source, workers=2, fork_zygote=True)
z = zygote.running()
if mode == "thread":
    stop.set()
    t.join()
elif mode == "lmdb":
    ds.close()
from dsbackup.engine.backup import BackupManager  # after: numpy may start a thread
from dsbackup.engine.config import BackupConfig

meta = BackupManager(BackupConfig(workers=2)).create_backup(source, archive)
print(started, z is not None, meta.statistics.mode)
"""


@pytest.mark.parametrize("mode", ["thread", "lmdb", "plain"])
def test_no_zygote_from_a_process_with_a_thread_or_an_lmdb_environment(store, tmp_path, mode):
    """A thread, or an LMDB environment open, when the zygote would be forked: none is, and
    the fork server starts the workers (a plain process gets one)."""
    mark = uuid.uuid4().hex
    res = subprocess.run([sys.executable, "-c", SCRIPT, mode, f"lmdb:{store}",
                          str(tmp_path / "a.tar.gz")],
                         env=_env(mark, DSBACKUP_PRESTART="0"), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    zyg = mode == "plain"
    assert res.stdout.split() == [str(zyg), str(zyg), "parallel"], res.stdout
    assert _none_left(mark)


def test_a_killed_worker_fails_the_backup_and_leaves_nothing(store, tmp_path):
    mark = uuid.uuid4().hex
    arc = tmp_path / "a.tar.gz"
    cli = _backup(store, arc, mark)
    _, workers = _wait_workers(cli, mark)
    os.kill(cli.pid, signal.SIGSTOP)  # the scan cannot end meanwhile
    os.kill(workers[0], signal.SIGKILL)
    os.kill(cli.pid, signal.SIGCONT)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 2, err
    # seen by its pipe or its exit code, whichever the parent reads first; never a message
    # about the archive (a send to the dead worker's pipe fails too)
    assert ("backup worker 0 died (exit code -9)" in err
            or "backup worker 0 exited unexpectedly" in err), err
    assert not arc.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # nor a temp file
    assert _none_left(mark)


def test_a_killed_cli_leaves_no_process(store, tmp_path):
    mark = uuid.uuid4().hex
    cli = _backup(store, tmp_path / "a.tar.gz", mark)
    _wait_workers(cli, mark)
    cli.kill()
    cli.communicate()
    assert _none_left(mark)  # the zygote saw the CLI go, killed its workers and exited


def test_a_killed_zygote_fails_the_backup_and_leaves_no_process(store, tmp_path):
    mark = uuid.uuid4().hex
    arc = tmp_path / "a.tar.gz"
    cli = _backup(store, arc, mark)
    zpid, _ = _wait_workers(cli, mark)
    os.kill(cli.pid, signal.SIGSTOP)
    os.kill(zpid, signal.SIGKILL)
    os.kill(cli.pid, signal.SIGCONT)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 2, err
    # its workers' status pipes closed without a code, or it is gone while forking the last
    assert "died (exit code 255)" in err or "the worker zygote is gone" in err, err
    assert not arc.exists()
    assert _none_left(mark)


def test_ctrl_c_exits_130_and_leaves_nothing(store, tmp_path):
    mark = uuid.uuid4().hex
    arc = tmp_path / "a.tar.gz"
    cli = _backup(store, arc, mark)
    _wait_workers(cli, mark)
    os.kill(cli.pid, signal.SIGSTOP)
    os.killpg(cli.pid, signal.SIGINT)  # the terminal's Ctrl-C: to every process of the group
    os.kill(cli.pid, signal.SIGCONT)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 130, err
    assert not arc.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    assert _none_left(mark)


def test_the_cli_called_in_process_stops_its_zygote(store, tmp_path):
    """dsbackup.cli.main.main() called by a program: the zygote ends with the command."""
    code = ("import os, sys\nfrom dsbackup.cli.main import main\n"
            "rc = main(['-vv', 'backup', '--workers', '2', sys.argv[1], sys.argv[2]])\n"
            "kids = open(f'/proc/self/task/{os.getpid()}/children').read().split()\n"
            "print(rc, kids)\n")
    mark = uuid.uuid4().hex
    res = subprocess.run([sys.executable, "-c", code, f"lmdb:{store}", str(tmp_path / "a.dsb")],
                         env=_env(mark), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "forked from zygote" in res.stderr, res.stderr
    assert res.stdout.strip() == "0 []", res.stdout  # no child left, not even a zombie


def test_worker_process_reports_the_exit_code_and_kills():
    """The parent's handle of a zygote worker: exit code from the status pipe (EOF: 255),
    kill only while the worker has not been reaped."""
    r, w = os.pipe()
    p = zygote.WorkerProcess(os.getpid(), r, "t")
    assert p.is_alive() and p.exitcode is None
    os.write(w, zygote._CODE.pack(-9))
    p.join(5)
    assert not p.is_alive() and p.exitcode == -9
    p.kill()  # reaped: no signal to a pid that may be another process's now
    p.close()
    os.close(w)
    r, w = os.pipe()
    q = zygote.WorkerProcess(os.getpid(), r, "t")
    os.close(w)  # the zygote died: no code
    q.join()
    assert q.exitcode == 255
    q.close()
