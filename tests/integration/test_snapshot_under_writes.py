"""A backup while another process keeps writing: every restored pair agrees (one snapshot)."""

from __future__ import annotations

import multiprocessing
import os
import time

import lmdb

from dsbackup import datasets
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig

PAIRS = 3000


def writer(path: str, stop, started) -> None:
    env = lmdb.open(path, map_size=1 << 30)
    gen = 0
    while not stop.is_set():
        gen += 1
        with env.begin(write=True) as txn:
            for i in range(0, PAIRS, 7):
                v = b"%d:" % gen + os.urandom(2000)
                txn.put(b"/pair/a/%05d" % i, v)
                txn.put(b"/pair/b/%05d" % i, v)
        started.set()
    env.close()


def test_pairs_agree_in_a_backup_taken_during_writes(tmp_path, monkeypatch):
    monkeypatch.setattr("dsbackup.engine.backup.PARALLEL_MIN_BYTES", 0)
    src = tmp_path / "src"
    recs = [(b"/pair/%s/%05d" % (s, i), b"0:" + bytes(2000)) for s in (b"a", b"b")
            for i in range(PAIRS)]
    datasets.write_lmdb(str(src), iter(recs))
    ctx = multiprocessing.get_context("spawn")
    stop, started = ctx.Event(), ctx.Event()
    p = ctx.Process(target=writer, args=(str(src), stop, started))
    p.start()
    try:
        assert started.wait(30)
        for round_ in range(3):
            archive = tmp_path / f"a{round_}.tar.gz"
            meta = BackupManager(BackupConfig(workers=2, chunk_size=50)).create_backup(
                f"lmdb:{src}", archive)
            assert meta.statistics.mode == "parallel"
            dst = open_datastore("memory:")
            BackupManager().restore_backup(archive, dst)
            for i in range(PAIRS):
                assert dst.get(b"/pair/a/%05d" % i) == dst.get(b"/pair/b/%05d" % i), i
            time.sleep(0.05)
    finally:
        stop.set()
        p.join(30)
