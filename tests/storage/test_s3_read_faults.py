"""Faults in the middle of a restore from S3, end to end (a real moto server behind a fault
proxy, the CLI in a subprocess): a planned GET's body cut halfway is fetched again from where
it stopped, with If-Match (the ETag the open saw, as every GET), and the restored store is the
source; without retries the cut is one line, exit 2, no secret."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from lmdb_files import read_all
from s3server import SECRET_KEY, FaultProxy, Rule

from dsbackup import ArchiveReader, datasets
from dsbackup.storage import s3 as s3mod

BLOCK = s3mod.BLOCK


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture
def archive(s3, tmp_path):
    """A store of ~14 MB of blocks backed up uncompressed to S3: (the store, the starts of
    the first two planned GETs of its chunks: coalesced members up to 8 MiB each)."""
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_blocks(80))
    r = cli(s3.env, "backup", f"lmdb:{src}", s3.url("cut.dsb"), "--level", "0")
    assert r.returncode == 0, r.stderr
    assert len(s3.get("cut.dsb")) > BLOCK + (256 << 10)
    with ArchiveReader(s3.url("cut.dsb")) as rd:
        first = rd.entry(0).offset
        second = next(rd.entry(i).offset for i in range(rd.chunk_count)
                      if rd.entry(i).offset + rd.entry(i).length > first + BLOCK)
    return src, first, second


def test_blocks_cut_halfway_are_resumed_and_the_restore_is_exact(s3, archive, tmp_path):
    store, first, second = archive
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        proxy.rules = [Rule("GET", "/cut.dsb", times=1, status=None, cut=True,
                            range=f"bytes={first}-"),
                       Rule("GET", "/cut.dsb", times=1, status=None, cut=True,
                            range=f"bytes={second}-")]
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_RETRIES="3")
        r = cli(env, "restore", s3.url("cut.dsb"), f"lmdb:{tmp_path / 'back'}")
        assert r.returncode == 0, r.stderr
        assert read_all(tmp_path / "back") == read_all(store)
        assert [rule.hits for rule in proxy.rules] == [1, 1]
        gets = [(h.get("range", ""), h.get("if-match")) for line, h
                in zip(proxy.seen, proxy.headers) if line.startswith("GET ")]
        # every GET after the open's carries the ETag it saw: one object throughout
        etags = {tag for rng, tag in gets if not rng.startswith("bytes=-")}
        assert len(etags) == 1 and None not in etags, gets
        starts = {int(rng.split("=")[1].split("-")[0]) for rng, _ in gets
                  if not rng.startswith("bytes=-")}
        resumed = sorted(x for x in starts if first < x < second or second < x < second + BLOCK
                         if x not in (first, second))
        assert len(resumed) >= 2 and resumed[0] < second < resumed[-1], gets
    finally:
        proxy.stop()


def test_a_cut_block_without_retries_is_one_line_exit_2(s3, archive, tmp_path):
    _, first, _ = archive
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        proxy.rules = [Rule("GET", "/cut.dsb", times=1, status=None, cut=True,
                            range=f"bytes={first}-")]
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_RETRIES="0")
        r = cli(env, "verify", s3.url("cut.dsb"))
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
        assert len(lines) == 1, r.stderr
        assert f"GET bytes {first}-" in lines[0] and "failed: the connection closed" in \
            lines[0], lines
        assert SECRET_KEY not in r.stderr + r.stdout and "Traceback" not in r.stderr
    finally:
        proxy.stop()


def test_a_failed_restore_does_not_wait_for_the_gets_still_in_flight(s3, archive, tmp_path):
    """The first chunks' GET refused (403), the next held 12 s at the proxy: the restore
    stops at once, exit 2, one line; closing the archive cut the GET held (the process does
    not wait for it to end, as the GET threads' join at exit would)."""
    _, first, second = archive
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        # refused: the first chunks' planned GET, and the block their read falls back to
        proxy.rules = [Rule("GET", "/cut.dsb", times=9, status=403, range=f"bytes={first}-"),
                       Rule("GET", "/cut.dsb", times=9, status=403,
                            range=f"bytes=0-{BLOCK - 1}"),
                       Rule("GET", "/cut.dsb", times=1, status=None, delay=12.0,
                            range=f"bytes={second}-")]
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)
        t0 = time.monotonic()
        r = cli(env, "restore", s3.url("cut.dsb"), f"lmdb:{tmp_path / 'back'}")
        took = time.monotonic() - t0
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
        assert len(lines) == 1 and "access denied" in lines[0], r.stderr
        assert proxy.rules[0].hits >= 1 and proxy.rules[2].hits == 1
        assert took < 8, took  # the GET held would have kept it 12 s and more
    finally:
        proxy.stop()
