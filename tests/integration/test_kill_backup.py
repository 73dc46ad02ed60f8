"""SIGKILL a backup at random moments: the final path never holds an archive, leftovers are
temp files the next run removes, and a rerun succeeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from dsbackup import datasets
from dsbackup.archive.verify import verify_archive


def leftovers(d, name):
    return sorted(p for p in os.listdir(d) if p.startswith(f".{name}.tmp-"))


@pytest.mark.parametrize("kills", [30])
def test_sigkill_backup_at_random_moments(tmp_path, cli_env, kills):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_blocks(160))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    archive = out_dir / "a.tar.gz"
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(archive),
           "--workers", "2", "--level", "3"]
    t = time.monotonic()
    assert subprocess.run(cmd, env=cli_env, capture_output=True).returncode == 0
    full = time.monotonic() - t
    archive.unlink()
    rng = random.Random(1234)
    finished = 0
    for i in range(kills):
        p = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, full * 1.1))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if archive.exists():
            # the kill came after the rename: the archive must be complete
            assert verify_archive(archive).ok, f"kill {i}: partial archive at the final path"
            finished += 1
            archive.unlink()
        for name in leftovers(out_dir, archive.name):
            assert ".tmp-" in name
    # leftovers from killed runs are removed by the next run, which succeeds
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert verify_archive(archive).ok
    assert leftovers(out_dir, archive.name) == []
    assert finished < kills  # most kills hit a running backup
    shm = [n for n in os.listdir("/dev/shm") if n.startswith("dsbackup-slots-")] if (
        os.path.isdir("/dev/shm")) else []
    alive = [n for n in shm if not n.split("-")[2].isdigit() or _pid_alive(int(n.split("-")[2]))]
    assert shm == alive  # no slot file of a dead backup is left after a new run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
