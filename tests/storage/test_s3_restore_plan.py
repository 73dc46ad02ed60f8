"""A restore of one prefix, and the restore and deep verify of an incremental, from S3
download the chunks they read, not 8 MiB blocks and their read-ahead (a real moto server
behind the tests' fault proxy, the CLI in a subprocess; bytes counted from the Range headers
asked for, as tests/storage/test_s3_ls.py counts them)."""

from __future__ import annotations

import random
import subprocess
import sys

import lmdb
import pytest
from lmdb_files import read_all
from s3server import FaultProxy

from dsbackup import ArchiveReader, prefix_bounds
from dsbackup.storage import s3 as s3mod

PREFIXES = ("/a", "/b", "/c")
SLACK = s3mod.TAIL_BYTES + (64 << 10)  # the open's suffix GET, the manifest's own GET


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True, timeout=240)


def _store(path, changed: int = 0) -> None:
    """~10 MB of incompressible 8 KiB values under three prefixes; `changed` of /c's first
    values replaced (an incremental's worth of change)."""
    rng = random.Random(5)
    env = lmdb.open(str(path), map_size=1 << 30, subdir=True)
    with env.begin(write=True) as txn:
        for p in PREFIXES:
            for i in range(400):
                value = rng.randbytes(8192)
                if p == "/c" and i < changed:
                    value = random.Random(1000 + i).randbytes(8192)
                txn.put(f"{p}/{i:05d}".encode(), value)
    env.close()


@pytest.fixture
def proxy(s3):
    p = FaultProxy(("127.0.0.1", s3.server.port)).start()
    yield p
    p.stop()


def _fetched(proxy: FaultProxy, key: str) -> int:
    """Bytes the Range headers of the GETs of `key` asked for."""
    n = 0
    for line, h in zip(proxy.seen, proxy.headers):
        if line.startswith("GET /") and f"/{key}" in line:
            rng = h.get("range", "")
            assert rng.startswith("bytes="), (line, rng)
            lo, _, hi = rng[6:].partition("-")
            n += int(hi) - int(lo) + 1 if lo else int(hi)
    return n


def test_a_one_prefix_restore_downloads_that_prefix(s3, proxy, tmp_path):
    src = tmp_path / "src"
    _store(src)
    r = cli(s3.env, "backup", f"lmdb:{src}", s3.url("full.dsb"), "--level", "0")
    assert r.returncode == 0, r.stderr
    with ArchiveReader(s3.url("full.dsb")) as rd:
        chunks = rd.index.chunks_overlapping(*prefix_bounds("/b"))
        needed = sum(rd.entry(i).length for i in chunks)
        size = rd.size
    assert 0 < needed < size / 2
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)
    r = cli(env, "restore", s3.url("full.dsb"), f"lmdb:{tmp_path / 'back'}", "--prefix", "/b")
    assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "back") == [kv for kv in read_all(src)
                                           if kv[0].startswith(b"/b/")]
    got = _fetched(proxy, "full.dsb")
    # was the whole archive here: the block holding /b's start and 3 blocks read ahead
    assert needed <= got <= needed + SLACK, (got, needed, size)


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_an_incremental_downloads_the_parents_chunks_it_references(s3, proxy, tmp_path,
                                                                    command):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    _store(s1)
    _store(s2, changed=150)
    r = cli(s3.env, "backup", f"lmdb:{s1}", s3.url("full.dsb"), "--level", "0")
    assert r.returncode == 0, r.stderr
    r = cli(s3.env, "backup", f"lmdb:{s2}", s3.url("inc.dsb"), "--level", "0",
            "--parent", s3.url("full.dsb"))
    assert r.returncode == 0, r.stderr
    with ArchiveReader(s3.url("inc.dsb")) as inc, ArchiveReader(s3.url("full.dsb")) as full:
        own = sum(inc.entry(i).length for i in range(inc.chunk_count)
                  if not inc.entry(i).in_parent)
        referenced = sum(full.entry(inc.entry(i).offset).length for i in range(inc.chunk_count)
                         if inc.entry(i).in_parent)
        unreferenced = full.size - referenced
    assert own and referenced and unreferenced > 1 << 20  # /c's replaced chunks
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)
    if command == "restore":
        r = cli(env, "restore", s3.url("inc.dsb"), f"lmdb:{tmp_path / 'back'}")
        assert r.returncode == 0, r.stderr
        assert read_all(tmp_path / "back") == read_all(s2)
    else:
        r = cli(env, "verify", s3.url("inc.dsb"), "--json")
        assert r.returncode == 0, r.stderr + r.stdout
    parent, child = _fetched(proxy, "full.dsb"), _fetched(proxy, "inc.dsb")
    # was the whole parent through the blocks, its replaced chunks included
    assert referenced <= parent <= referenced + SLACK, (parent, referenced)
    assert own <= child <= own + SLACK, (child, own)


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_a_pool_of_readers_downloads_each_chunk_once(s3, proxy, tmp_path, command):
    """Small chunks read by 6 threads a window apart (out of order within it): every read
    is served by its planned GET, none falls back to a block fetched beside the plan."""
    src = tmp_path / "src"
    _store(src)
    r = cli(s3.env, "backup", f"lmdb:{src}", s3.url("full.dsb"), "--level", "0",
            "--chunk-size", "4", "--include-metadata")
    assert r.returncode == 0, r.stderr
    with ArchiveReader(s3.url("full.dsb")) as rd:
        assert rd.chunk_count > 250
        size = rd.size
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_READ_CONCURRENCY="2")
    if command == "restore":
        r = cli(env, "restore", s3.url("full.dsb"), f"lmdb:{tmp_path / 'back'}",
                "--workers", "6")
        assert r.returncode == 0, r.stderr
        assert read_all(tmp_path / "back") == read_all(src)
    else:
        r = cli(env, "verify", s3.url("full.dsb"), "--workers", "6")
        assert r.returncode == 0, r.stderr + r.stdout
    assert _fetched(proxy, "full.dsb") <= size + SLACK


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_small_spans_and_budget_under_a_pool_of_readers(s3, proxy, tmp_path, monkeypatch,
                                                        command):
    """In process, with spans of at most 64 KiB and a 256 KiB budget (many spans, the budget
    always full): reads out of order within the pool's window, and ahead of the spans
    started, are all served by their spans (no block fetched, no byte asked for twice)."""
    from dsbackup import restore_archive, verify_archive
    from dsbackup.storage import s3config, s3plan

    src = tmp_path / "src"
    _store(src)
    r = cli(s3.env, "backup", f"lmdb:{src}", s3.url("full.dsb"), "--level", "0",
            "--chunk-size", "2")
    assert r.returncode == 0, r.stderr
    with ArchiveReader(s3.url("full.dsb")) as rd:
        size = rd.size
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("DSBACKUP_S3_READ_CONCURRENCY", "3")
    monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
    monkeypatch.setattr(s3config, "_tuned", False)
    monkeypatch.setattr(s3mod, "BLOCK", 64 << 10)
    monkeypatch.setattr(s3plan, "AHEAD_BYTES", 256 << 10)
    s3mod.reset()
    fetches: list[tuple[int, int]] = []
    close = s3mod.S3Source.close

    def counted(self):
        fetches.append((self._fetches, self._plan.gets if self._plan else -1))
        close(self)

    monkeypatch.setattr(s3mod.S3Source, "close", counted)
    if command == "restore":
        restore_archive(s3.url("full.dsb"), f"lmdb:{tmp_path / 'back'}", workers=6)
        assert read_all(tmp_path / "back") == read_all(src)
    else:
        report = verify_archive(s3.url("full.dsb"), threads=6)
        assert report.ok, report.errors
    assert fetches and fetches[-1][0] == 0 and fetches[-1][1] > 100, fetches
    assert _fetched(proxy, "full.dsb") <= size + SLACK
