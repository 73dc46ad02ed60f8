"""An incremental backup of a flatfs store over ``max_names`` keys (bucket by bucket,
engine/flatfs_buckets.py), run as the CLI: Ctrl-C and SIGTERM while it spills exit 130 with
no archive and no spill directory left; a full spill disk is one line, exit 2, no archive
and nothing left on that disk; with room again the same command works."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsbackup.datastores.flatfs_spill import SPILL_PREFIX
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from tests.support.flatfs_files import random_names, write_store

N = 30_000
SMALL = 1000  # max_names: ~60 buckets


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("incspill")
    rnd = random.Random(3)
    root = write_store(d / "blocks", random_names(N, seed=4),
                       lambda n: n.encode() + rnd.randbytes(rnd.randrange(0, 300)))
    parent = d / "full.tar.gz"
    BackupManager(BackupConfig(workers=1)).create_backup(f"flatfs:{root}", parent)
    return root, parent


@pytest.fixture
def env(cli_env, tmp_path) -> dict[str, str]:
    spill = tmp_path / "tmp"
    spill.mkdir()
    return dict(cli_env, TMPDIR=str(spill), DSBACKUP_PRESTART="0")


def _cmd(store, out: Path) -> list[str]:
    root, parent = store
    return [sys.executable, "-m", "dsbackup", "backup", f"flatfs:{root}?max_names={SMALL}",
            str(out), "--parent", str(parent), "--workers", "1"]


def _spills(env) -> list[str]:
    return [n for n in os.listdir(env["TMPDIR"]) if n.startswith(SPILL_PREFIX)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_it_spills_leaves_no_spill_and_no_archive(store, env, tmp_path, sig):
    out = tmp_path / "a.tar.gz"
    p = subprocess.Popen(_cmd(store, out), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
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
    assert [n for n in os.listdir(tmp_path) if n.startswith(".a")] == []


def test_a_full_spill_disk_is_one_line_and_exit_2(store, env, tmp_path):
    tiny = Path(env["TMPDIR"])
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    out = tmp_path / "a.tar.gz"
    try:
        r = subprocess.run(_cmd(store, out), env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "cannot write the spill file of a flatfs listing: No space left on " \
               "device" in lines[0]
        assert not out.exists()
        assert [n for n in os.listdir(tmp_path) if n.startswith(".a")] == []
        assert os.listdir(tiny) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
    r = subprocess.run(_cmd(store, out), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.exists() and _spills(env) == []
