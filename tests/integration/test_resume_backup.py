"""SIGKILL a real `dsbackup backup` once its temp file holds part of the archive, then
`backup --resume`: the archive verifies deep, restores to exactly the store, and its summary
and `inspect` record the resume (docs/FORMAT.md §11.5)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from tests.support.deadwriter import dead_writer_file, sigkill_when_temp_over, temp_paths


def contents(uri):
    out = []
    with open_datastore(uri, readonly=True) as ds:
        for keys, values in ds.scan_batches():
            out += list(zip(keys, values))
    return out


def test_sigkill_then_resume(tmp_path, cli_env):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(150000))
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "a.tar.gz"
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(archive),
           "--workers", "1", "--level", "6", "--chunk-size", "100"]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    size = archive.stat().st_size
    archive.unlink()

    tmp = sigkill_when_temp_over(cmd, cli_env, out, archive.name, size // 3)
    killed_size = tmp.stat().st_size

    # other settings: refused, exit 2, the file kept as it was
    r = subprocess.run([*cmd[:-1], "50", "--resume"], env=cli_env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "cannot resume" in r.stderr and "chunk_size" in r.stderr
    assert "Traceback" not in r.stderr
    assert temp_paths(out, archive.name) == [tmp] and tmp.stat().st_size == killed_size

    r = subprocess.run([*cmd, "--resume"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert temp_paths(out, archive.name) == []
    v = subprocess.run([sys.executable, "-m", "dsbackup", "verify", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    with ArchiveReader(archive) as a:
        [epoch] = a.summary["resumed"]
        chunks = a.chunk_count
        kept_end = a.index.entry(epoch["from_seq"] - 1)
    assert 0 < epoch["from_seq"] < chunks and epoch["epoch"] == 1
    assert kept_end.offset + kept_end.length <= killed_size
    assert isinstance(epoch["snapshot"], int)

    dst = tmp_path / "dst"
    r = subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(archive),
                        f"lmdb:{dst}"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{src}")

    r = subprocess.run([sys.executable, "-m", "dsbackup", "inspect", "--json", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert json.loads(r.stdout)["resumed"] == [epoch]
    r = subprocess.run([sys.executable, "-m", "dsbackup", "inspect", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert f"epoch 1 from chunk {epoch['from_seq']}" in r.stdout


def test_resume_without_a_temp_file_says_so(tmp_path, cli_env):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(100))
    archive = tmp_path / "a.tar.gz"
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                        str(archive), "--resume"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "no temporary file of an interrupted backup to resume" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                        str(tmp_path / "b.tar.gz"), "--resume", "--parent", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # an incremental: nothing to resume, a new backup
    assert "no temporary file of an interrupted backup to resume" in r.stderr


def _flip_in_chunk(archive, seq) -> bytes:
    """The archive's bytes with one bit flipped inside chunk `seq`'s member."""
    with ArchiveReader(archive) as a:
        e = a.index.entry(seq)
    data = bytearray(archive.read_bytes())
    data[e.offset + e.length // 2] ^= 0x10
    return bytes(data)


@pytest.mark.parametrize("no_verify", [True, False], ids=["no-verify", "verify"])
def test_a_damaged_whole_archive_left_by_a_killed_run_is_not_put_in_place(
        tmp_path, cli_env, no_verify):
    """A run killed while checking its finished archive leaves a whole archive in its temp
    file; a chunk of it damaged since (bit rot, a hostile edit) is found before the rename,
    --no-verify or not (its bytes are not this run's), and the file is resumed from before
    that chunk: the archive put in place verifies and restores to exactly the store. (It was
    put in place as it was with --no-verify, exit 0, and deleted with exit 3 without.)"""
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(6000))
    archive = tmp_path / "a.tar.gz"
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(archive),
           "--workers", "1", "--chunk-size", "100"]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    damaged = _flip_in_chunk(archive, 30)
    archive.unlink()
    dead_writer_file(archive, damaged)

    r = subprocess.run([*cmd, "--resume", *(["--no-verify"] if no_verify else [])],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fails its check" in r.stderr and "30 chunks" in r.stderr
    assert temp_paths(tmp_path, archive.name) == []
    v = subprocess.run([sys.executable, "-m", "dsbackup", "verify", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    with ArchiveReader(archive) as a:
        assert [e["from_seq"] for e in a.summary["resumed"]] == [30]
    dst = tmp_path / "dst"
    r = subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(archive),
                        f"lmdb:{dst}"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{src}")


def _signal_when_temp_over(cmd, env, out, name, size, sig):
    """Start `cmd`, send `sig` once its temp file is over `size` bytes; its exit code and
    stderr."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        tmps = temp_paths(out, name)
        try:
            if tmps and tmps[0].stat().st_size > size:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    p.send_signal(sig)
    _, err = p.communicate()
    return p.returncode, err


@pytest.mark.parametrize("name", ["a.tar.gz", "a" * 240 + ".tar.gz"], ids=["short", "long"])
def test_a_resume_run_stopped_by_a_signal_keeps_its_temp_file(tmp_path, cli_env, name):
    """A `backup --resume` run stopped cleanly (systemd's SIGTERM, Ctrl-C, --timeout) keeps
    its temp file — a first run's once its manifest is written, and a resumed run's, which
    holds the earlier runs' work too — and the next --resume goes on from there (both were
    deleted: a backup stopped so could never be resumed, and a resumed one lost everything
    the earlier runs had written)."""
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(60000))
    out = tmp_path / "out"
    out.mkdir()
    archive = out / name  # a long name's temp file has a shortened one (storage/tempfiles.py)
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(archive),
           "--workers", "1", "--level", "6", "--chunk-size", "100"]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    size = archive.stat().st_size
    archive.unlink()

    for part in (1, 2):  # a first run (nothing to resume), then a resumed one
        rc, err = _signal_when_temp_over([*cmd, "--resume"], cli_env, out, archive.name,
                                         size * part // 3, signal.SIGTERM)
        assert rc == 130, err
        assert not archive.exists()
        [kept] = temp_paths(out, archive.name)
        assert f"its temporary file {kept.name} is kept: backup --resume continues it" in err
        assert kept.stat().st_size > size * part // 3

    r = subprocess.run([*cmd, "--resume"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert temp_paths(out, archive.name) == []
    with ArchiveReader(archive) as a:
        first, second = a.summary["resumed"]
    assert 0 < first["from_seq"] < second["from_seq"]
    v = subprocess.run([sys.executable, "-m", "dsbackup", "verify", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    dst = tmp_path / "dst"
    r = subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(archive),
                        f"lmdb:{dst}"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{src}")
