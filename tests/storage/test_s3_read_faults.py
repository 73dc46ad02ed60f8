"""Faults in the middle of a restore from S3, end to end (a real moto server behind a fault
proxy, the CLI in a subprocess): a block's body cut halfway is fetched again from where it
stopped, with If-Match, and the restored store is the source; without retries the cut is one
line, exit 2, no secret."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lmdb_files import read_all
from s3server import SECRET_KEY, FaultProxy, Rule

from dsbackup import datasets
from dsbackup.storage import s3 as s3mod

BLOCK = s3mod.BLOCK


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture
def archive(s3, tmp_path):
    """A store of ~14 MB of blocks backed up uncompressed to S3: two 8 MiB read blocks (the
    rules name block 0's range exactly: the manifest is read by a GET of its own first)."""
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_blocks(80))
    r = cli(s3.env, "backup", f"lmdb:{src}", s3.url("cut.dsb"), "--level", "0")
    assert r.returncode == 0, r.stderr
    assert len(s3.get("cut.dsb")) > BLOCK + (256 << 10)
    return src


def test_blocks_cut_halfway_are_resumed_and_the_restore_is_exact(s3, archive, tmp_path):
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        proxy.rules = [Rule("GET", "/cut.dsb", times=1, status=None, cut=True,
                            range=f"bytes=0-{BLOCK - 1}"),
                       Rule("GET", "/cut.dsb", times=1, status=None, cut=True,
                            range=f"bytes={BLOCK}-")]
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_RETRIES="3")
        r = cli(env, "restore", s3.url("cut.dsb"), f"lmdb:{tmp_path / 'back'}")
        assert r.returncode == 0, r.stderr
        assert read_all(tmp_path / "back") == read_all(archive)
        assert [rule.hits for rule in proxy.rules] == [1, 1]
        resumed = [(h.get("range", ""), h.get("if-match")) for line, h
                   in zip(proxy.seen, proxy.headers) if line.startswith("GET ")
                   and h.get("if-match")]
        starts = sorted(int(rng.split("=")[1].split("-")[0]) for rng, _ in resumed)
        assert len(starts) == 2 and 0 < starts[0] < BLOCK < starts[1] < 2 * BLOCK, resumed
        assert all(tag and tag.strip('"') for _, tag in resumed)
    finally:
        proxy.stop()


def test_a_cut_block_without_retries_is_one_line_exit_2(s3, archive, tmp_path):
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        proxy.rules = [Rule("GET", "/cut.dsb", times=1, status=None, cut=True,
                            range=f"bytes=0-{BLOCK - 1}")]
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_RETRIES="0")
        r = cli(env, "verify", s3.url("cut.dsb"))
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
        assert len(lines) == 1, r.stderr
        assert f"GET bytes 0-{BLOCK} failed: the connection closed" in lines[0], lines
        assert SECRET_KEY not in r.stderr + r.stdout and "Traceback" not in r.stderr
    finally:
        proxy.stop()
