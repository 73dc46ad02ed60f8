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


def test_sigkill_restore_into_flatfs_then_rerun(tmp_path, cli_env):
    """The same into flatfs (staged writes, engine/restore_staged.py): after a SIGKILL at any
    point, every record file present holds its whole value (temp files are renamed in only
    once fsynced), and the rerun ends with the source's tree exactly: files, bytes, modes,
    no temp file left in .temp/ or anywhere."""
    from dsbackup.datastores.flatfs import FlatfsDatastore

    src = tmp_path / "src"
    rnd = random.Random(7)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    recs = {b"/CIQ" + bytes(rnd.choices(alphabet, k=40)): rnd.randbytes(rnd.choice([10, 30_000]))
            for _ in range(2500)}
    ds = FlatfsDatastore(src)
    ds.put_many(list(recs), list(recs.values()))
    ds.close()
    archive = tmp_path / "a.tar.gz"
    base = [sys.executable, "-m", "dsbackup"]
    r = subprocess.run(base + ["backup", f"flatfs:{src}", str(archive), "--chunk-size", "40"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    def tree(root):
        return {p.relative_to(root).as_posix(): (p.stat().st_mode & 0o7777,
                                                 None if p.is_dir() else p.read_bytes())
                for p in sorted(root.rglob("*")) if p.name != "diskUsage.cache"}

    want = tree(src)
    t = time.monotonic()
    r = subprocess.run(base + ["restore", str(archive), f"flatfs:{tmp_path / 'full'}",
                               "--workers", "2"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    full = time.monotonic() - t
    assert tree(tmp_path / "full") == want
    for i in range(4):
        dst = tmp_path / f"dst{i}"
        cmd = base + ["restore", str(archive), f"flatfs:{dst}", "--workers", "2"]
        p = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.2, 0.8) * full)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        for f in dst.glob("*/*.data"):  # whole or absent
            assert f.read_bytes() == recs[b"/" + f.name[:-5].encode()]
        r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
        journal = tmp_path / f"dst{i}.dsbackup-restore.json"
        if r.returncode == 2 and "not empty" in r.stderr and not journal.exists():
            pass  # the kill came after the restore had finished
        else:
            assert r.returncode == 0, (i, r.stderr)
        assert tree(dst) == want
        assert not journal.exists()
