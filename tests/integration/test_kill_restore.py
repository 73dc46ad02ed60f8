"""SIGKILL a restore, rerun it with the same options: the target is exactly the archive."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from dsbackup import datasets
from dsbackup.demo import store_digest


def test_sigkill_restore_then_rerun(tmp_path, cli_env):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(60_000))
    archive = tmp_path / "a.tar.gz"
    base = [sys.executable, "-m", "dsbackup"]
    r = subprocess.run(base + ["backup", f"lmdb:{src}", str(archive), "--chunk-size", "300"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = store_digest(f"lmdb:{src}")
    t = time.monotonic()
    r = subprocess.run(base + ["restore", str(archive), f"lmdb:{tmp_path / 'full'}",
                               "--workers", "2"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    full = time.monotonic() - t
    rng = random.Random(99)
    checked_backup = None
    for i in range(5):
        dst = tmp_path / f"dst{i}"
        cmd = base + ["restore", str(archive), f"lmdb:{dst}", "--workers", "2"]
        t = time.monotonic()
        p = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 0.7) * full)
        if p.poll() is not None:  # finished before the kill (a slow machine): nothing to test
            assert p.returncode == 0
            assert store_digest(f"lmdb:{dst}") == want
            continue
        p.send_signal(signal.SIGKILL)
        p.wait()
        journal = tmp_path / f"dst{i}.dsbackup-restore.json"
        if journal.exists() and not checked_backup:
            # half a store: a backup of it is refused (exit 2, one line naming the journal),
            # no archive; the rerun below finishes it, and then it backs up
            arc = tmp_path / f"half{i}.tar.gz"
            b = subprocess.run(base + ["backup", f"lmdb:{dst}", str(arc)], env=cli_env,
                               capture_output=True, text=True)
            assert b.returncode == 2, b.stderr
            assert b.stderr.count("\n") == 1 and "did not finish" in b.stderr, b.stderr
            assert str(journal) in b.stderr and not arc.exists()
            checked_backup = arc
        r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
        if r.returncode == 2 and "not empty" in r.stderr and not journal.exists():
            # the kill landed after the restore had finished (journal already removed):
            # the target must already be exact
            assert store_digest(f"lmdb:{dst}") == want
            continue
        assert r.returncode == 0, (i, time.monotonic() - t, r.stderr)
        assert store_digest(f"lmdb:{dst}") == want
        assert not (tmp_path / f"dst{i}.dsbackup-restore.json").exists()
        if checked_backup is not None and checked_backup.name == f"half{i}.tar.gz":
            b = subprocess.run(base + ["backup", f"lmdb:{dst}", str(checked_backup)],
                               env=cli_env, capture_output=True, text=True)
            assert b.returncode == 0, b.stderr
