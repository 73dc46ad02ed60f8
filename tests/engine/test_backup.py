"""BackupManager end to end: round trips across backends, determinism, exclusions, timeouts."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import Cancelled, ConfigError, RestoreError

BACKENDS = ["memory", "lmdb", "flatfs", "leveldb", "sqlite"]


@pytest.fixture(autouse=True)
def parallel_even_for_small_stores(monkeypatch):
    """Exercise the worker processes on the small stores these tests use."""
    monkeypatch.setattr("dsbackup.engine.backup.PARALLEL_MIN_BYTES", 0)


def flatfs_safe_records(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Keys valid in every backend (flatfs allows only its base32 charset)."""
    rng = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    recs = {}
    while len(recs) < n:
        name = bytes(rng.choice(alphabet) for _ in range(rng.randrange(8, 20)))
        recs[b"/" + name] = rng.randbytes(rng.randrange(0, 3000))
    return sorted(recs.items())


def make_store(kind: str, tmp_path, name: str):
    if kind == "memory":
        return open_datastore("memory:")
    return open_datastore(f"{kind}:{tmp_path / name}")


def contents(ds) -> list[tuple[bytes, bytes]]:
    out = []
    for keys, values in ds.scan_batches():
        out += list(zip(keys, values))
    return out


@pytest.mark.parametrize("src_kind,dst_kind", list(itertools.product(BACKENDS, BACKENDS)))
def test_roundtrip_every_backend_pair(tmp_path, src_kind, dst_kind):
    records = flatfs_safe_records(120, seed=hash((src_kind, dst_kind)) & 0xFFFF)
    src = make_store(src_kind, tmp_path, "src")
    src.put_many([k for k, _ in records], [v for _, v in records])
    mgr = BackupManager(BackupConfig(chunk_size=7, workers=2))
    archive = tmp_path / "a.tar.gz"
    meta = mgr.create_backup(src, archive)
    assert meta.total_keys == len(records)
    assert meta.total_size == sum(len(k) + len(v) for k, v in records)
    dst = make_store(dst_kind, tmp_path, "dst")
    res = mgr.restore_backup(archive, dst)
    assert res.records_written == len(records)
    assert contents(dst) == records
    src.close()
    dst.close()


@pytest.mark.parametrize("records", [[], [(b"/one", b"1")]], ids=["empty", "one-key"])
@pytest.mark.parametrize("workers", [1, 2])
def test_empty_and_single_key_lmdb(tmp_path, records, workers):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), iter(records))
    mgr = BackupManager(BackupConfig(workers=workers))
    meta = mgr.create_backup(f"lmdb:{src}", tmp_path / "a.tar.gz")
    assert meta.total_keys == len(records)
    assert mgr.verify_backup(tmp_path / "a.tar.gz").ok
    mgr.restore_backup(tmp_path / "a.tar.gz", f"lmdb:{tmp_path / 'dst'}")
    with open_datastore(f"lmdb:{tmp_path / 'dst'}", readonly=True) as ds:
        assert contents(ds) == records


@pytest.mark.slow
def test_one_million_small_keys(tmp_path):
    n = 1_000_000
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(n), sort=False, batch=50_000)
    mgr = BackupManager(BackupConfig(workers=2))
    meta = mgr.create_backup(f"lmdb:{src}", tmp_path / "a.tar.gz")
    assert meta.total_keys == n
    mgr.restore_backup(tmp_path / "a.tar.gz", f"lmdb:{tmp_path / 'dst'}")
    from dsbackup.demo import store_digest
    assert store_digest(f"lmdb:{src}") == store_digest(f"lmdb:{tmp_path / 'dst'}")


def member_digests(path) -> list[int]:
    with ArchiveReader(path) as r:
        return [e.member_xxh3 for e in r.index.entries()]


def _worker_count_source(tmp_path, kind) -> tuple[str, int]:
    records = flatfs_safe_records(3000, seed=5)
    src = open_datastore(f"{kind}:{tmp_path / 'src'}", sync=False)  # a source: no fsyncs
    src.put_many([k for k, _ in records], [v for _, v in records])
    src.close()
    return f"{kind}:{tmp_path / 'src'}", len(records)


def _backups_with_1_2_4_workers(tmp_path, kind, source=None):
    uri, n = source or _worker_count_source(tmp_path, kind)
    digests = []
    for w in (1, 2, 4):
        cfg = BackupConfig(workers=w, chunk_size=40, chunk_max_bytes=64 << 10,
                           include_metadata=True)
        path = tmp_path / f"w{w}.tar.gz"
        path.unlink(missing_ok=True)
        meta = BackupManager(cfg).create_backup(uri, path)
        assert meta.statistics.mode == ("central" if w == 1 else "parallel")
        assert meta.total_keys == n
        with ArchiveReader(path) as r:
            assert r.index.catalog_count == r.chunk_count
            catalogs = [(r.index.catalog(i).member_xxh3, r.index.catalog(i).data_xxh3)
                        for i in range(r.chunk_count)]
        digests.append((member_digests(path), catalogs))
    assert len(digests[0][0]) > 50
    return digests


@pytest.fixture(scope="module", params=["lmdb", "sqlite", "flatfs"])
def worker_count_backups(request, tmp_path_factory):
    """One store's backups with 1, 2 and 4 workers (their folder and digests), made once for
    the two tests below, which read them."""
    d = tmp_path_factory.mktemp(f"workers-{request.param}")
    with pytest.MonkeyPatch.context() as m:
        m.setattr("dsbackup.engine.backup.PARALLEL_MIN_BYTES", 0)
        return d, _backups_with_1_2_4_workers(d, request.param)


def test_members_identical_for_any_worker_count(worker_count_backups):
    _, digests = worker_count_backups
    for w, d in zip((2, 4), digests[1:]):
        bad = [i for i, (a, b) in enumerate(zip(digests[0][0], d[0])) if a != b]
        assert not bad and len(d[0]) == len(digests[0][0]), f"{w} workers: chunks {bad[:5]}"
        # the catalogs hold the same data (their member bytes: next test)
        assert [c[1] for c in d[1]] == [c[1] for c in digests[0][1]], f"{w} workers"


def _assert_catalog_members_identical(tmp_path, digests) -> None:
    for w, d in zip((2, 4), digests[1:]):
        bad = [(i, a[1] == b[1]) for i, (a, b) in enumerate(zip(digests[0][1], d[1])) if a != b]
        assert not bad, (f"{w} workers: catalogs (index, same data) {bad[:5]}; first: "
                         + _catalog_member_diff(tmp_path / "w1.tar.gz",
                                                tmp_path / f"w{w}.tar.gz", bad[0][0]))


# Catalog members once differed here about once in three suite runs: ISA-L's level 1/2 body
# hashed a stream's position 2 from the stream's address, so the same catalog could encode
# differently in another thread (see LEAD in ext/compress.pyx; the address test is
# tests/ext/test_compress_address.py).
def test_catalog_members_identical_for_any_worker_count(worker_count_backups):
    _assert_catalog_members_identical(*worker_count_backups)


_BACKUP_IN_A_FRESH_PROCESS = """
import sys
from dsbackup.engine import backup
from dsbackup.engine.config import BackupConfig
backup.PARALLEL_MIN_BYTES = 0  # workers even for this small store
for w, path in zip((1, 4), sys.argv[2:]):
    cfg = BackupConfig(workers=w, chunk_size=40, chunk_max_bytes=64 << 10, include_metadata=True)
    meta = backup.BackupManager(cfg).create_backup(sys.argv[1], path)
    assert meta.statistics.mode == ("central" if w == 1 else "parallel"), meta.statistics.mode
"""


ROUNDS = int(os.environ.get("DSBACKUP_SOAK_ROUNDS", "200"))


@pytest.mark.soak
def test_catalog_members_identical_for_any_worker_count_soak(tmp_path, cli_env):
    """200 fresh processes each back up the same source with 1 and 4 workers; every chunk and
    catalog member equals the reference. (The old defect depended on where a thread's engine
    state lay in memory, which a fresh process randomises; it showed about once in three
    suite runs.)"""
    source = _worker_count_source(tmp_path, "lmdb")
    ref = _backups_with_1_2_4_workers(tmp_path, "lmdb", source)
    assert all(d == ref[0] for d in ref[1:])
    one, four = tmp_path / "p1.tar.gz", tmp_path / "p4.tar.gz"
    for i in range(ROUNDS):
        one.unlink(missing_ok=True)
        four.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-c", _BACKUP_IN_A_FRESH_PROCESS, source[0], one, four],
                       env=cli_env, check=True, timeout=300)
        for path in (one, four):
            with ArchiveReader(path) as r:
                catalogs = [(r.index.catalog(j).member_xxh3, r.index.catalog(j).data_xxh3)
                            for j in range(r.chunk_count)]
            assert (member_digests(path), catalogs) == ref[0], f"round {i}: {path.name}"


def _catalog_member_diff(a: Path, b: Path, i: int) -> str:
    """Where catalog i's member bytes of two archives differ (for the failure message)."""
    raws = []
    for path in (a, b):
        with ArchiveReader(path) as r:
            c = r.index.catalog(i)
            raws.append(r.pread(c.offset, c.length))
    x, y = raws
    at = next((j for j in range(min(len(x), len(y))) if x[j] != y[j]), min(len(x), len(y)))
    return (f"lengths {len(x)}/{len(y)}, first difference at byte {at}: "
            f"{x[max(0, at - 8):at + 24].hex()} vs {y[max(0, at - 8):at + 24].hex()}")


def test_parallel_balances_clustered_keys(tmp_path):
    """Keys clustered under two prefixes still get split between workers."""
    recs = sorted(itertools.chain(
        ((b"/blocks/%08d" % i, os.urandom(2000)) for i in range(4000)),
        ((b"/pins/%06d" % i, b"p") for i in range(50))))
    datasets.write_lmdb(str(tmp_path / "src"), iter(recs))
    cfg = BackupConfig(workers=4, chunk_size=20, chunk_max_bytes=64 << 10)
    meta = BackupManager(cfg).create_backup(f"lmdb:{tmp_path / 'src'}", tmp_path / "a.tar.gz")
    assert meta.total_keys == len(recs)
    one = BackupManager(BackupConfig(workers=1, chunk_size=20, chunk_max_bytes=64 << 10))
    one.create_backup(f"lmdb:{tmp_path / 'src'}", tmp_path / "b.tar.gz")
    assert member_digests(tmp_path / "a.tar.gz") == member_digests(tmp_path / "b.tar.gz")


def test_slow_writer_spills_and_keeps_chunks_exact(tmp_path):
    """While the parent is held up on the first chunks, workers run ahead (keeping finished
    chunks in their slots, spilling some); the archive is still exactly the one a single
    sequential scan writes. The spill policy itself: tests/pipeline/test_parallel.py."""
    recs = [(b"/blocks/%08d" % i, random.Random(i).randbytes(1500)) for i in range(6000)]
    datasets.write_lmdb(str(tmp_path / "src"), iter(recs))
    uri = f"lmdb:{tmp_path / 'src'}"
    calls = []

    def slow_start(p):
        calls.append(p.chunks)
        if len(calls) <= 3:
            threading.Event().wait(0.5)

    cfg = BackupConfig(workers=2, chunk_size=20, chunk_max_bytes=64 << 10)
    BackupManager(cfg).create_backup(uri, tmp_path / "a.tar.gz", progress=slow_start)
    with ArchiveReader(tmp_path / "a.tar.gz") as r:
        assert r.summary["spilled_chunks"] >= 0  # how many depends on timing
        assert r.summary["records"] == len(recs)
    one = BackupManager(BackupConfig(workers=1, chunk_size=20, chunk_max_bytes=64 << 10))
    one.create_backup(uri, tmp_path / "b.tar.gz")
    assert member_digests(tmp_path / "a.tar.gz") == member_digests(tmp_path / "b.tar.gz")


def test_exclude_patterns_are_counted(tmp_path):
    recs = sorted([(b"/blocks/A%d" % i, b"x" * 10) for i in range(10)]
                  + [(b"/local/x/%d" % i, b"y") for i in range(5)]
                  + [(b"/pins/%d" % i, b"z") for i in range(3)] + [(b"/pins/a/b", b"deep")])
    src = open_datastore("memory:")
    src.put_many([k for k, _ in recs], [v for _, v in recs])
    cfg = BackupConfig(exclude_patterns=["/local/**", "/pins/*"], workers=2)
    meta = BackupManager(cfg).create_backup(src, tmp_path / "a.tar.gz")
    assert meta.statistics.skipped_keys == 8
    assert meta.total_keys == 11
    dst = open_datastore("memory:")
    BackupManager().restore_backup(tmp_path / "a.tar.gz", dst)
    expect = [k for k, _ in recs if not (k.startswith(b"/local/") or (
        k.startswith(b"/pins/") and k.count(b"/") == 2))]
    assert [k for k, _ in contents(dst)] == expect


def test_timeout_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_blocks(300))
    cfg = BackupConfig(timeout=0.05, workers=2, compression_level=9)
    with pytest.raises(Cancelled, match="timed out"):
        BackupManager(cfg).create_backup(f"lmdb:{src}", tmp_path / "a.tar.gz")
    assert os.listdir(tmp_path) == ["src"]


def test_cancel_event(tmp_path):
    src = open_datastore("memory:")
    recs = flatfs_safe_records(2000)
    src.put_many([k for k, _ in recs], [v for _, v in recs])
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p.records)
        cancel.set()

    with pytest.raises(Cancelled):
        BackupManager(BackupConfig(chunk_size=5)).create_backup(
            src, tmp_path / "a.tar.gz", progress=progress, cancel=cancel)
    assert seen and not (tmp_path / "a.tar.gz").exists()
    assert os.listdir(tmp_path) == []


def test_restore_refuses_non_empty_target_then_modes(tmp_path):
    recs = flatfs_safe_records(50)
    src = open_datastore("memory:")
    src.put_many([k for k, _ in recs], [v for _, v in recs])
    mgr = BackupManager()
    mgr.create_backup(src, tmp_path / "a.tar.gz")
    dst = open_datastore(f"lmdb:{tmp_path / 'dst'}")
    dst.put(recs[0][0], b"old")
    dst.put(b"/EXTRA", b"keep")
    with pytest.raises(RestoreError, match="not empty"):
        mgr.restore_backup(tmp_path / "a.tar.gz", dst)
    res = mgr.restore_backup(tmp_path / "a.tar.gz", dst, mode="skip_existing")
    assert res.records_skipped == 1 and dst.get(recs[0][0]) == b"old"
    mgr.restore_backup(tmp_path / "a.tar.gz", dst, mode="overwrite")
    assert dst.get(recs[0][0]) == recs[0][1] and dst.get(b"/EXTRA") == b"keep"
    dst.close()


def test_restore_prefix_and_pattern(tmp_path):
    recs = sorted([(b"/a/%03d" % i, b"a") for i in range(100)]
                  + [(b"/ab/%03d" % i, b"b") for i in range(100)]
                  + [(b"/c/x/%d" % i, b"c") for i in range(10)])
    src = open_datastore("memory:")
    src.put_many([k for k, _ in recs], [v for _, v in recs])
    mgr = BackupManager(BackupConfig(chunk_size=9))
    mgr.create_backup(src, tmp_path / "a.tar.gz")
    dst = open_datastore("memory:")
    mgr.restore_backup(tmp_path / "a.tar.gz", dst, prefix="/a")
    assert [k for k, _ in contents(dst)] == [k for k, _ in recs if k.startswith(b"/a/")]
    dst2 = open_datastore("memory:")
    mgr.restore_backup(tmp_path / "a.tar.gz", dst2, pattern="/c/*/*")
    assert len(contents(dst2)) == 10
    with pytest.raises(ConfigError):
        mgr.restore_backup(tmp_path / "a.tar.gz", dst2, mode="bogus")


def test_inspect_and_metrics(tmp_path):
    src = open_datastore("memory:")
    src.put(b"/k", b"v")
    mgr = BackupManager()
    meta = mgr.create_backup(src, tmp_path / "a.tar.gz")
    info = mgr.inspect(tmp_path / "a.tar.gz")
    assert info.fingerprint == meta.fingerprint and info.total_keys == 1
    assert info.config["engine"] == "isal-1"
    assert mgr.get_metrics()["backups_total"] == 1
