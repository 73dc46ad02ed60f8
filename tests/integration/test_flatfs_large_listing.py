"""Backups of a flatfs store over ``max_names`` names (``flatfs:PATH?max_names=N``), run as
the CLI: the archive is byte for byte the one an in-memory listing gives (central and
parallel scans), the spill directory under TMPDIR is gone after success, Ctrl-C and a full
spill disk (one line, exit 2, no archive), and one left by a SIGKILLed backup is removed by
the next run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores.flatfs_spill import SPILL_PREFIX
from tests.support.flatfs_files import random_names, write_store

GOLDEN_CLOCK = Path(__file__).resolve().parents[1] / "support" / "golden_clock"
N = 30_000
SMALL = 1000  # max_names: ~30 buckets


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("large") / "blocks"
    rnd = random.Random(7)
    write_store(root, random_names(N, seed=9),
                lambda n: n.encode() * 4 + rnd.randbytes(rnd.randrange(0, 1500)))
    return root


@pytest.fixture
def env(cli_env, tmp_path) -> dict[str, str]:
    spill = tmp_path / "tmp"
    spill.mkdir()
    e = dict(cli_env, TMPDIR=str(spill), DSBACKUP_PRESTART="0")
    return e


def _backup(env, src: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", "backup", src, str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=300)


def _spills(env) -> list[str]:
    return [n for n in os.listdir(env["TMPDIR"]) if n.startswith(SPILL_PREFIX)]


def _locked_spill(env) -> bool:
    return any(os.path.exists(os.path.join(env["TMPDIR"], n, "lock")) for n in _spills(env))


def _before_summary(path: Path) -> bytes:
    with ArchiveReader(path) as r:
        offset = r.trailer.summary_offset
    return path.read_bytes()[:offset]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_archive_is_byte_identical_to_the_in_memory_listings(store, env, tmp_path, workers):
    frozen = dict(env, DSBACKUP_GOLDEN_CLOCK="1",
                  PYTHONPATH=os.pathsep.join([str(GOLDEN_CLOCK), env["PYTHONPATH"]]))
    big, small = tmp_path / "big.tar.gz", tmp_path / "small.tar.gz"
    r = _backup(frozen, f"flatfs:{store}", big, "--workers", workers)
    assert r.returncode == 0, r.stderr
    r = _backup(frozen, f"flatfs:{store}?max_names={SMALL}", small, "--workers", workers)
    assert r.returncode == 0, r.stderr
    if workers == "1":
        assert small.read_bytes() == big.read_bytes()
    else:  # the parallel summary's spilled_chunks is timing (tests/engine/test_golden.py)
        assert _before_summary(small) == _before_summary(big)
    with ArchiveReader(small) as a:
        assert a.summary["records"] == N
    assert _spills(env) == []


@pytest.mark.parametrize(("workers", "sig"), [("1", signal.SIGINT), ("2", signal.SIGINT),
                                            ("1", signal.SIGTERM)])
def test_ctrl_c_during_a_spilling_backup_leaves_no_spill_and_no_archive(store, env, tmp_path,
                                                                         workers, sig):
    out = tmp_path / "a.tar.gz"
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"flatfs:{store}?max_names={SMALL}",
           str(out), "--workers", workers, "--level", "9"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 60
    while not _spills(env) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert _spills(env), "the backup did not spill"
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert _spills(env) == []
    assert not out.exists()


def test_spill_left_by_a_sigkilled_backup_is_removed_by_the_next(store, env, tmp_path):
    out = tmp_path / "a.tar.gz"
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"flatfs:{store}?max_names={SMALL}",
           str(out), "--workers", "1", "--level", "9"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    # killed once its spill directory is locked: one killed in the instant between making
    # it and locking it is young and lockless, and kept for a minute (flatfs_spill._YOUNG_S)
    while not _locked_spill(env) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    [left] = _spills(env)
    assert left.startswith(f"{SPILL_PREFIX}{p.pid}-")
    assert not out.exists()
    r = _backup(env, f"flatfs:{store}?max_names={SMALL}", out, "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert _spills(env) == []


def test_a_full_spill_disk_is_one_line_and_exit_2(store, env, tmp_path):
    tiny = Path(env["TMPDIR"])
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        for workers in ("1", "2"):
            out = tmp_path / f"a{workers}.tar.gz"
            r = _backup(env, f"flatfs:{store}?max_names={SMALL}", out, "--workers", workers)
            assert r.returncode == 2, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
            assert "cannot write the spill file of a flatfs listing: No space left on " \
                   "device" in lines[0]
            assert "TMPDIR" in lines[0]
            assert not out.exists()
            assert [n for n in os.listdir(tmp_path) if n.startswith(".a")] == []
            assert os.listdir(tiny) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
