"""Leftover temp files of killed writers (issue #20 item 8): the next writer in the directory
removes those of dead writers whatever final name they were for (scheduled runs use a new name
each time), and never the file of a live writer."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.storage.tempfiles import fsync_dir, remove_stale_temp_files, stale_temp_files

WRITER = """
import sys, time
from dsbackup.archive.writer import ArchiveWriter
w = ArchiveWriter(sys.argv[1], manifest={"format": "dsbackup", "version": 1, "parent": None})
print(w.tmp, flush=True)
time.sleep(600)
"""


def _start_writer(final: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], env=env,
                         stdout=subprocess.PIPE, text=True)
    tmp = Path(p.stdout.readline().strip())
    assert tmp.name.startswith(f".{final.name}.tmp-{p.pid}-") and tmp.exists()
    return p, tmp


def test_sigkilled_writer_temp_is_removed_by_the_next_run_of_another_name(tmp_path, cli_env,
                                                                          run_cli):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), ((b"/k/%04d" % i, b"v") for i in range(200)))
    d = tmp_path / "backups"
    d.mkdir()
    killed, killed_tmp = _start_writer(d / "job_20260101_000000.tar.gz", cli_env)
    live, live_tmp = _start_writer(d / "job_20260101_000001.tar.gz", cli_env)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        killed.stdout.close()
        assert killed_tmp.exists()  # what a SIGKILL leaves behind
        r = run_cli("backup", f"lmdb:{src}", d / "job_20260102_000000.tar.gz")
        assert r.returncode == 0, r.stderr
        assert not killed_tmp.exists()  # another final name: removed all the same
        assert live_tmp.exists()  # a running writer's file is never touched
        assert live.poll() is None
    finally:
        live.kill()
        live.wait()
        live.stdout.close()
    assert stale_temp_files(d) == [live_tmp]  # its writer is gone now
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == [
        "job_20260102_000000.tar.gz"]


def test_lock_and_boot_time_decide_when_the_pid_is_ambiguous(tmp_path):
    d = tmp_path
    final = d / "a.tar.gz"
    # PID 1 always exists: a file of "PID 1" written before the last boot is a leftover (the
    # PID was reused), one written since is left alone (it may be a live writer's)
    old = d / ".x_20260101_000000.tar.gz.tmp-1-0123456789ab"
    new = d / ".y_20260101_000000.tar.gz.tmp-1-0123456789ab"
    other = d / ".notes.tmp-1-zz"  # not an archive temp name
    for p in (old, new, other):
        p.write_bytes(b"partial")
    os.utime(old, (0, 0))
    own = d / f".z.tar.gz.tmp-{os.getpid()}-0123456789ab"  # this process: a live writer
    own.write_bytes(b"partial")
    # a PID that cannot exist, but the file's lock is held: a writer still has it open
    locked = d / ".w.tar.gz.tmp-999999999-0123456789ab"
    locked.write_bytes(b"partial")
    fd = os.open(locked, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_stale_temp_files(final) == [old]
        assert new.exists() and other.exists() and own.exists() and locked.exists()
    finally:
        os.close(fd)
    assert remove_stale_temp_files(final) == [locked]  # lock released: a dead writer's


def test_fsync_dir_takes_str_bytes_and_path_and_syncs_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for p in (tmp_path, str(tmp_path), os.fsencode(tmp_path)):
        fsync_dir(p)
    assert synced == [str(tmp_path)] * 3


def test_fsync_dir_raises_an_open_error_unless_best_effort(tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        fsync_dir(missing)
    with pytest.raises(NotADirectoryError):
        (tmp_path / "file").write_bytes(b"")
        fsync_dir(tmp_path / "file")
    fsync_dir(missing, best_effort=True)  # the migration journal's directories: skipped


_HOLDER = """
import fcntl, os, sys
path = os.path.join(sys.argv[1], f".a.tar.gz.tmp-{os.getpid()}-0123456789ab")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print(path, flush=True)
sys.stdin.read()
"""


def test_a_second_writer_of_the_same_archive_is_refused_up_front(tmp_path, cli_env):
    # it used to write the whole archive, then fail (exit 2) or, with --overwrite, replace the
    # first writer's archive; now: exit 4 at once, the first writer's file untouched
    from dsbackup.storage.tempfiles import live_writer

    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1")]))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(holder.stdout.readline().strip())
        assert live_writer(tmp_path / "a.tar.gz") == (holder.pid, tmp)
        assert live_writer(tmp_path / "b.tar.gz") is None
        for extra in ([], ["--overwrite"], ["--resume"]):
            r = subprocess.run([sys.executable, "-m", "dsbackup", "backup",
                                f"lmdb:{tmp_path / 'src'}", str(tmp_path / "a.tar.gz"), *extra],
                               env=cli_env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 4, r.stderr
            assert f"another dsbackup process (PID {holder.pid}) is writing" in r.stderr
            assert not (tmp_path / "a.tar.gz").exists() and tmp.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert live_writer(tmp_path / "a.tar.gz") is None  # its writer is gone: a leftover


def _unopenable(monkeypatch, path: Path) -> None:
    """`path` cannot be opened by this process (another user's mode-0600 file; tests may run
    as root, who opens anything)."""
    from dsbackup.storage import tempfiles

    real = os.open

    def refuse(p, flags, *a, **k):
        if os.fspath(p) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real(p, flags, *a, **k)

    monkeypatch.setattr(tempfiles.os, "open", refuse)


def test_an_unopenable_leftover_of_a_reused_pid_is_no_live_writer(tmp_path, monkeypatch):
    """A temp file this process may not open, named for a PID that now belongs to another
    process (here: our parent) and locked by nobody, was taken for a live writer: every
    backup to that archive was refused (exit 4) until someone removed it. The kernel's lock
    table says nobody holds it; a real holder is still found."""
    from dsbackup.storage.tempfiles import live_writer

    final = tmp_path / "a.tar.gz"
    tmp = tmp_path / f".a.tar.gz.tmp-{os.getppid()}-0123456789ab"
    tmp.write_bytes(b"partial")
    _unopenable(monkeypatch, tmp)
    assert live_writer(final) is None
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(tmp)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert live_writer(final) == (os.getppid(), tmp)  # locked: a writer's
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert live_writer(final) is None


def test_a_fifo_or_symlink_under_a_temp_name_is_no_writer_and_does_not_block(tmp_path):
    """A FIFO named like a temp file of a live PID blocked the check forever (a read-only
    open of a FIFO waits for a writer); a symlink is no writer's file either."""
    from dsbackup.storage.tempfiles import live_writer

    os.mkfifo(tmp_path / f".a.tar.gz.tmp-{os.getppid()}-0123456789ab")
    (tmp_path / "t").write_bytes(b"x")
    os.symlink(tmp_path / "t", tmp_path / f".b.tar.gz.tmp-{os.getppid()}-0123456789ab")
    def hung(*_):
        raise TimeoutError("live_writer blocked on the FIFO")

    before = signal.signal(signal.SIGALRM, hung)  # a hang fails the test, not the run
    signal.alarm(20)
    try:
        assert live_writer(tmp_path / "a.tar.gz") is None
        assert live_writer(tmp_path / "b.tar.gz") is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def test_live_temp_files_lists_live_writers_of_any_name_and_not_dead_ones(tmp_path, cli_env):
    """What prune keeps parents for: a live writer's temp file (another process, or this one),
    whatever its final name; not the leftover of a SIGKILLed writer."""
    from dsbackup.storage import live_writes
    from dsbackup.storage.local import LocalSink
    from dsbackup.storage.tempfiles import live_temp_files

    live, live_tmp = _start_writer(tmp_path / "a_20260101_000000.tar.gz", cli_env)
    killed, killed_tmp = _start_writer(tmp_path / "b_20260101_000000.tar.gz", cli_env)
    own = LocalSink(tmp_path / "c.tar.gz")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_tmp.exists()
        assert live_temp_files(tmp_path) == sorted([(live.pid, live_tmp),
                                                    (os.getpid(), own.tmp)],
                                                   key=lambda t: t[1].name)
        finals = {w.final: w.who for w in live_writes(tmp_path)}
        assert finals == {"a_20260101_000000.tar.gz": f"PID {live.pid}",
                          "c.tar.gz": f"PID {os.getpid()}"}
    finally:
        own.abort()
        live.kill()
        live.wait()
    assert live_temp_files(tmp_path) == []


def test_a_resumed_writer_of_a_dead_pids_temp_file_is_live_for_prune(tmp_path, cli_env):
    """`backup --resume` continues a SIGKILLed writer's temp file under its name, which
    carries the dead PID (storage/local.py ResumedSink). live_temp_files required that PID to
    exist, so prune took the resumed backup for a leftover and deleted its parent. The lock
    the resumer holds is what counts; a leftover nobody holds is still not listed."""
    from dsbackup.engine.resume import find_temp
    from dsbackup.storage.tempfiles import live_temp_files

    final = tmp_path / "a_20260101_000000.tar.gz"
    killed, tmp = _start_writer(final, cli_env)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert live_temp_files(tmp_path) == []
    found = find_temp(final)  # what --resume takes: the file, its lock held
    assert found is not None and found[0] == tmp
    try:
        assert live_temp_files(tmp_path) == [(killed.pid, tmp)]
    finally:
        os.close(found[1])
    assert live_temp_files(tmp_path) == []


def test_a_name_too_long_for_a_temp_name_is_shortened_there_uniquely():
    from dsbackup.storage.tempfiles import TEMP_STEM_ROOM, name_stem, temp_path_for, temp_stem

    assert TEMP_STEM_ROOM == 229
    assert name_stem("a" * 229, 229) == "a" * 229  # the names every version has used
    long1, long2 = "a" * 240 + ".tar.gz", "a" * 241 + ".tar.gz"
    s1, s2 = name_stem(long1, 229), name_stem(long2, 229)
    assert s1 != s2 and len(s1) <= 229 and s1.startswith("a" * 200)
    tmp = temp_path_for(Path("/d") / long1)
    assert len(os.fsencode(tmp.name)) <= 255 and temp_stem(tmp.name) == s1
    e = "é" * 127  # 254 bytes: cut at a character, never inside one
    assert name_stem(e, 229).startswith("é" * 106 + "~")
    assert name_stem(e, 228).startswith("é" * 105 + "~")


def test_an_archive_name_of_250_bytes_is_backed_up_and_its_leftover_resumed(tmp_path, cli_env):
    """Its temp name (`.NAME.tmp-PID-RANDOM`, 26 bytes more) was too long: every backup to
    a name of 230-255 bytes failed at once, `cannot create temporary file: File name too
    long`."""
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/k/%04d" % i, b"v" * 100)
                                                     for i in range(300)]))
    full, inc, again = ("f" * 243 + ".tar.gz", "i" * 243 + ".tar.gz", "r" * 243 + ".tar.gz")

    def backup(name: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dsbackup", "backup",
                               f"lmdb:{tmp_path / 'src'}", str(tmp_path / name), *extra],
                              env=cli_env, capture_output=True, text=True, timeout=120)

    r = backup(full)
    assert r.returncode == 0, r.stderr
    r = backup(inc, "--parent", str(tmp_path / full))  # holds its parent: no warning
    assert r.returncode == 0 and "cannot hold" not in r.stderr, r.stderr
    # a killed backup's whole temp file (killed in the check before the rename): resumed
    from dsbackup.storage.tempfiles import temp_prefix

    left = tmp_path / f"{temp_prefix(tmp_path / again)}4194999-0123456789ab"
    left.write_bytes((tmp_path / full).read_bytes())
    r = backup(again, "--resume")
    assert r.returncode == 0, r.stderr
    assert not left.exists()
    assert (tmp_path / again).read_bytes() == (tmp_path / full).read_bytes()
