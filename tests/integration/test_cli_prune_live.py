"""`dsbackup prune` keeps the parent of an archive that is still being written (found by the
review): a running backup writes a hidden temp file, which prune did not list, so the parent of
an incremental in progress could be deleted and the new archive then lacked its parent. The
writer here is a real process holding a real LocalSink (its lock, its PID in the name) whose
temp file holds the manifest member of a real incremental archive, as a backup writes it
first (docs/FORMAT.md §1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.datastores import open_datastore

_WRITER = """
import sys
from pathlib import Path
from dsbackup.archive.member import member_end
from dsbackup.storage.local import LocalSink
sink = LocalSink(Path(sys.argv[1]))
if sys.argv[2] != "-":
    data = Path(sys.argv[2]).read_bytes()
    sink.write([data[:member_end(memoryview(data), 0)[1]]])  # the manifest member
print(sink.tmp, flush=True)
sys.stdin.read()
"""


def _change(src: Path, n: int) -> None:
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/%05d" % (n * 97), b"changed %d" % n)


@pytest.fixture
def chain(tmp_path, run_cli):
    """d/x_05 (full), the head of an incremental on it (its file then removed), d/x_07 (a
    newer full backup): prune --keep-last 1 would delete x_05."""
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(1500)))
    d = tmp_path / "d"
    d.mkdir()
    full1, inc, full2 = (d / "x_20260105_000000.tar.gz", tmp_path / "inc.tar.gz",
                         d / "x_20260107_000000.tar.gz")
    assert run_cli("backup", f"lmdb:{src}", full1).returncode == 0
    _change(src, 1)
    assert run_cli("backup", f"lmdb:{src}", inc, "--parent", full1).returncode == 0
    _change(src, 2)
    assert run_cli("backup", f"lmdb:{src}", full2).returncode == 0
    return d, full1, inc, full2


@pytest.fixture
def writer(cli_env):
    procs: list[subprocess.Popen] = []

    def start(final: Path, head: Path | None) -> tuple[subprocess.Popen, Path]:
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(final), str(head or "-")],
                             env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        tmp = Path(p.stdout.readline().strip())
        assert tmp.name.startswith(f".{final.name}.tmp-{p.pid}-") and tmp.exists()
        return p, tmp

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _prune(run_cli, d: Path, *extra: str) -> dict:
    r = run_cli("prune", d, "--keep-last", "1", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_parent_of_an_incremental_being_written_is_kept(chain, writer, run_cli):
    d, full1, inc, full2 = chain
    p, tmp = writer(d / "y_20260108_000000.tar.gz", inc)
    out = _prune(run_cli, d, "--dry-run")
    x = {e["id"]: e for e in out["groups"]["x"]}
    assert x[full1.name]["keep"] and x[full1.name]["rule"] == "in-progress"
    assert "y_20260108_000000.tar.gz" in x[full1.name]["reason"]
    assert f"PID {p.pid}" in x[full1.name]["reason"]
    assert _prune(run_cli, d)["deleted"] == []  # (before: x_05 deleted)
    assert full1.exists() and tmp.exists()

    # the writer killed: its leftover, which `backup --resume` can finish, keeps the parent
    # (rule resumable, naming the file; before, it protected nothing and x_05 was deleted)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert tmp.exists()
    out = _prune(run_cli, d)
    assert out["deleted"] == []
    x = {e["id"]: e for e in out["groups"]["x"]}
    assert x[full1.name]["rule"] == "resumable" and tmp.name in x[full1.name]["reason"]
    assert "delete that file" in x[full1.name]["reason"]
    # the leftover deleted: nothing protects x_05 any more
    tmp.unlink()
    assert _prune(run_cli, d)["deleted"] == [str(full1)]
    assert full2.exists()


def test_a_temp_file_whose_manifest_is_not_readable_keeps_every_older_archive(chain, writer,
                                                                              run_cli):
    """Nothing written yet (an encrypted archive's head is sealed the same way): any archive
    created before the temp file was last written may be its parent (rule maybe-parent)."""
    d, full1, _, full2 = chain
    p, tmp = writer(d / "y_20260108_000000.tar.gz", None)
    out = _prune(run_cli, d)
    assert out["deleted"] == []
    x = {e["id"]: e for e in out["groups"]["x"]}
    assert x[full1.name]["rule"] == "maybe-parent"
    assert "y_20260108_000000.tar.gz" in x[full1.name]["reason"]
    # archives created after the temp file was last written cannot be its parent
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    assert _prune(run_cli, d)["deleted"] == [str(full1)]
    assert tmp.exists() and p.poll() is None


def test_a_full_backup_being_written_protects_nothing(chain, writer, run_cli):
    d, full1, _, full2 = chain
    writer(d / "y_20260108_000000.tar.gz", full2)  # the head of a full backup: no parent
    assert _prune(run_cli, d)["deleted"] == [str(full1)]


def test_prune_beside_a_real_incremental_backup_keeps_its_parent(tmp_path, run_cli, cli_env):
    """End to end: a real `dsbackup backup --parent`, stopped (SIGSTOP) once its temp file holds
    its manifest; prune --keep-last 1 keeps the parent; the backup then finishes, verified."""
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), datasets.iter_blocks(120))
    d = tmp_path / "d"
    d.mkdir()
    parent, newer = d / "x_20260105_000000.tar.gz", d / "x_20260107_000000.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", parent, "--level", "0").returncode == 0
    assert run_cli("backup", f"lmdb:{src}", newer, "--level", "0").returncode == 0
    datasets.write_lmdb(str(src), datasets.iter_small(30000, seed=9))  # new chunks to write
    child = d / "y_20260108_000000.tar.gz"
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", child,
                          "--parent", parent, "--workers", "1", "--level", "9"],
                         env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            tmps = [t for t in d.iterdir() if t.name.startswith(f".{child.name}.tmp-")]
            try:  # the manifest (a few hundred bytes) and a chunk or more: written
                if tmps and tmps[0].stat().st_size >= 65536:
                    break
            except OSError:
                pass
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGSTOP)
        out = _prune(run_cli, d)
        assert out["deleted"] == [] and parent.exists()
        x = {e["id"]: e for e in out["groups"]["x"]}
        assert x[parent.name]["rule"] == "in-progress" and child.name in x[parent.name]["reason"]
    finally:
        os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    r = run_cli("verify", child)
    assert r.returncode == 0, r.stderr + r.stdout


def test_prune_keeps_the_chain_of_a_killed_incremental_until_it_is_resumed(tmp_path, run_cli,
                                                                           cli_env):
    """A real `dsbackup backup --parent` killed (SIGKILL) mid-way leaves a temp file that
    `backup --resume` continues. prune used to delete the parent meanwhile (a dead writer's
    leftover protected nothing), and the resume then failed ("no such archive"), the hours
    the killed run had written lost. Now the leftover keeps the parent chain (rule resumable,
    its reason naming the file and how to let it go); the resume finishes, verified."""
    from tests.support.deadwriter import sigkill_when_temp_over

    src = tmp_path / "s"
    datasets.write_lmdb(str(src), datasets.iter_blocks(120))
    d = tmp_path / "d"
    d.mkdir()
    parent, newer = d / "x_20260105_000000.tar.gz", d / "x_20260107_000000.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", parent, "--level", "0").returncode == 0
    assert run_cli("backup", f"lmdb:{src}", newer, "--level", "0").returncode == 0
    datasets.write_lmdb(str(src), datasets.iter_small(30000, seed=9))
    child = d / "y_20260108_000000.tar.gz"
    opts = ["--parent", str(parent), "--workers", "1", "--level", "9"]
    tmp = sigkill_when_temp_over([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                                  str(child), *opts], cli_env, d, child.name, 65536)
    r = run_cli("prune", d, "--keep-last", "1")
    assert r.returncode == 0, r.stderr
    assert parent.exists() and tmp.exists()
    line = next(x for x in r.stdout.splitlines() if parent.name in x)
    assert "rule resumable" in line and tmp.name in line and "backup --resume" in line
    r = run_cli("backup", "--resume", f"lmdb:{src}", child, *opts)
    assert r.returncode == 0, r.stderr
    r = run_cli("verify", child)
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.fixture
def two_dirs(tmp_path, run_cli):
    """A/x_05 and A/x_07 (full backups), the store changed since: a backup to B with parent
    A/x_05 has chunks to write; prune A --keep-last 1 would delete x_05."""
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), datasets.iter_blocks(120))
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    parent, newer = a / "x_20260105_000000.tar.gz", a / "x_20260107_000000.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", parent, "--level", "0").returncode == 0
    assert run_cli("backup", f"lmdb:{src}", newer, "--level", "0").returncode == 0
    datasets.write_lmdb(str(src), datasets.iter_small(30000, seed=9))
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(b / "y.tar.gz"),
           "--parent", str(parent), "--workers", "1", "--level", "9"]
    return a, b, parent, cmd


def _holds(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if ".hold-" in n)


def test_prune_of_another_directory_keeps_the_parent_a_running_backup_holds(two_dirs, run_cli,
                                                                           cli_env):
    """A backup writing into B whose parent is in A: prune A looked for temp files in A only,
    deleted the parent, and the backup then failed at its check (exit 2, its work lost). Now
    the backup holds each archive of its chain (a locked `.NAME.hold-PID-R` beside it, from
    the opening of its parent on): prune A keeps it (rule in-progress naming B/y.tar.gz and the
    PID); the backup, stopped meanwhile (SIGSTOP), finishes and removes its hold."""
    a, b, parent, cmd = two_dirs
    p = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            tmps = [t for t in b.iterdir() if t.name.startswith(".y.tar.gz.tmp-")]
            try:
                if tmps and tmps[0].stat().st_size >= 65536:
                    break
            except OSError:
                pass
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGSTOP)
        out = _prune(run_cli, a)
        assert out["deleted"] == [] and parent.exists()
        assert _holds(a) == [n for n in _holds(a) if n.startswith(f".{parent.name}.hold-")] != []
        x = {e["id"]: e for e in out["groups"]["x"]}
        assert x[parent.name]["rule"] == "in-progress"
        assert str(b / "y.tar.gz") in x[parent.name]["reason"]
        assert f"PID {p.pid}" in x[parent.name]["reason"]
    finally:
        os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert run_cli("verify", b / "y.tar.gz").returncode == 0
    assert _holds(a) == []


def test_a_killed_backup_s_hold_keeps_nothing_unless_its_temp_file_can_be_resumed(
        two_dirs, run_cli, cli_env):
    """The backup into B killed (SIGKILL): its hold in A is no longer locked and keeps
    nothing by itself; but it names the archive being written, whose temp file in B
    `backup --resume` can finish, so prune A keeps the parent (rule resumable, naming that
    file); the resume then finishes. With the temp file deleted instead, prune A deletes the
    parent (and the next backup holding an archive of A removes the dead hold)."""
    from tests.support.deadwriter import sigkill_when_temp_over

    a, b, parent, cmd = two_dirs
    tmp = sigkill_when_temp_over(cmd, cli_env, b, "y.tar.gz", 65536)
    out = _prune(run_cli, a)
    assert out["deleted"] == [] and parent.exists()
    assert len(_holds(a)) == 1
    x = {e["id"]: e for e in out["groups"]["x"]}
    assert x[parent.name]["rule"] == "resumable" and str(tmp) in x[parent.name]["reason"]
    # deleted instead of resumed: the dead hold keeps nothing
    saved = tmp.with_name("saved")
    os.rename(tmp, saved)
    x = {e["id"]: e for e in _prune(run_cli, a, "--dry-run")["groups"]["x"]}
    assert not x[parent.name]["keep"]
    os.rename(saved, tmp)
    r = run_cli("backup", "--resume", *cmd[4:])
    assert r.returncode == 0, r.stderr
    assert run_cli("verify", b / "y.tar.gz").returncode == 0
