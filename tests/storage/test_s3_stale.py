"""Stale multipart uploads (dsbackup/storage/s3stale.py): a backup killed with SIGKILL leaves
its unfinished upload; the next backup to the prefix, or prune of it, aborts it once it has been
idle for the configured hours, and leaves live uploads and other keys alone. The real CLI in a
subprocess, the production clients over HTTP to moto's server on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, Rule

from dsbackup import datasets

ONE_SECOND = str(1 / 3600)  # DSBACKUP_S3_STALE_HOURS
TOKEN = "dsbSESSIONtoken+Never+Print/77"


def cli(env, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


# the stores are made once per module: the tests only read them
@pytest.fixture(scope="module")
def big(tmp_path_factory):
    src = tmp_path_factory.mktemp("big") / "big"
    datasets.write_lmdb(str(src), datasets.iter_blocks(160))  # ~40 MB: 8 parts of 5 MiB
    return src


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    src = tmp_path_factory.mktemp("small") / "small"
    datasets.write_lmdb(str(src), datasets.iter_small(500))
    return src


def _start_backup(s3, proxy, src, key, **env):
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_PART_MB="5",
               DSBACKUP_S3_CONCURRENCY="1", **env)
    return subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                             s3.url(key), "--level", "0", "--workers", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proxy, text, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not any(text in s for s in proxy.seen):
        assert time.monotonic() < deadline, proxy.seen
        time.sleep(0.01)


def _others(s3):
    """Unfinished uploads that are not dsbackup's, or not under the prefix, all old."""
    ids = {}
    for key in ("n/sub/deeper.dsb", "n/.hidden.dsb", "elsewhere/x.dsb"):
        uid = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
        s3.client.upload_part(Bucket=s3.bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"z")
        ids[key] = uid
    return ids


def test_killed_backup_upload_is_aborted_by_the_next_backup_once_stale(s3, big, small):
    others = _others(s3)
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    # part 3 hangs (then fails, never reaching the server): the backup is mid-upload
    proxy.rules = [Rule("PUT", "partNumber=3", times=1, status=503, delay=30.0)]
    try:
        p = _start_backup(s3, proxy, big, "n/killed.dsb")
        _wait_for(proxy, "partNumber=3")
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL
    finally:
        proxy.stop()
    assert sorted(s3.uploads()) == sorted(["n/killed.dsb", *others])
    assert "n/killed.dsb" not in s3.objects()

    # younger than the default 24 hours: left alone
    r = cli(s3.env, "backup", f"lmdb:{small}", s3.url("n/second.dsb"))
    assert r.returncode == 0, r.stderr
    assert "n/killed.dsb" in s3.uploads() and "aborted an unfinished" not in r.stderr

    # idle for more than a second, with a second as the limit: aborted, said on stderr
    time.sleep(2.5)
    env = dict(s3.env, DSBACKUP_S3_STALE_HOURS=ONE_SECOND, AWS_SESSION_TOKEN=TOKEN)
    r = cli(env, "-v", "-v", "backup", f"lmdb:{small}", s3.url("n/third.dsb"), "--json")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "aborted an unfinished multipart" in ln]
    assert len(lines) == 1 and s3.url("n/killed.dsb") in lines[0]
    assert "2 part(s), 10.5 MB" in lines[0]
    assert sorted(s3.uploads()) == sorted(others)  # sub-prefix, hidden name, other prefix
    assert {"n/second.dsb", "n/third.dsb"} <= set(s3.objects())
    assert cli(s3.env, "verify", s3.url("n/third.dsb")).returncode == 0
    for secret in (SECRET_KEY, ACCESS_KEY, TOKEN, "Signature=", "Authorization"):
        assert secret not in r.stdout + r.stderr


def test_a_live_upload_is_left_alone_and_completes(s3, big, small):
    """moto reports every upload as initiated in 2010: what keeps a running backup's upload
    alive is its newest part, seconds old."""
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("PUT", "partNumber=2", times=1, status=None, delay=6.0)]
    try:
        p = _start_backup(s3, proxy, big, "n/live.dsb")
        _wait_for(proxy, "partNumber=2")  # part 1 is in; part 2 held back a while
        env = dict(s3.env, DSBACKUP_S3_STALE_HOURS="0.5")
        r = cli(env, "backup", f"lmdb:{small}", s3.url("n/other.dsb"))
        assert r.returncode == 0, r.stderr
        assert "aborted an unfinished" not in r.stderr
        r = cli(env, "prune", s3.url("n/"), "--keep-last", "5", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["stale_uploads"] == []
        assert s3.uploads() == ["n/live.dsb"]
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    finally:
        proxy.stop()
    assert s3.uploads() == [] and "n/live.dsb" in s3.objects()


def test_prune_aborts_stale_uploads_and_dry_run_only_says_so(s3):
    uid = s3.client.create_multipart_upload(Bucket=s3.bucket,
                                            Key="n/ipfs_20260101_000000.tar.gz")["UploadId"]
    s3.client.upload_part(Bucket=s3.bucket, Key="n/ipfs_20260101_000000.tar.gz", UploadId=uid,
                          PartNumber=1, Body=b"x" * 1000)
    others = _others(s3)
    time.sleep(2.5)
    env = dict(s3.env, DSBACKUP_S3_STALE_HOURS=ONE_SECOND)
    r = cli(env, "prune", s3.url("n/"), "--keep-last", "3", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["stale_uploads"]
    assert [(u["location"], u["upload_id"], u["aborted"], u["parts"], u["bytes"])
            for u in got] == [(s3.url("n/ipfs_20260101_000000.tar.gz"), uid, False, 1, 1000)]
    assert "would abort" in r.stderr
    assert len(s3.uploads()) == 4
    r = cli(env, "prune", s3.url("n/"), "--keep-last", "3")
    assert r.returncode == 0, r.stderr
    assert "aborted an unfinished multipart upload" in r.stderr
    assert sorted(s3.uploads()) == sorted(others)
    # the option beats the environment; "off" turns it off
    r = cli(env, "--s3-stale-hours", "off", "prune", s3.url("elsewhere/"), "--keep-last", "1",
            "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["stale_uploads"] == []
    assert "elsewhere/x.dsb" in s3.uploads()


def test_a_failing_check_is_a_warning_for_backup_and_prune(s3, small):
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("GET", "uploads", times=100, status=403)]
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, AWS_SESSION_TOKEN=TOKEN)
    try:
        r = cli(env, "-v", "-v", "backup", f"lmdb:{small}", s3.url("w/a.dsb"))
        assert r.returncode == 0, r.stderr
        assert "could not check for stale multipart uploads" in r.stderr
        assert "HTTP 403" in r.stderr and "the backup goes on" in r.stderr
        r2 = cli(env, "-v", "prune", s3.url("w/"), "--keep-last", "1", "--json")
        assert r2.returncode == 1, r2.stderr
        assert "HTTP 403" in json.loads(r2.stdout)["stale_uploads_error"]
    finally:
        proxy.stop()
    for out in (r, r2):
        for secret in (SECRET_KEY, ACCESS_KEY, TOKEN, "Signature="):
            assert secret not in out.stdout + out.stderr


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan"])
def test_a_wrong_age_is_one_line_exit_2(s3, value):
    r = cli(s3.env, "--s3-stale-hours", value, "prune", s3.url("n/"), "--keep-last", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--s3-stale-hours" in r.stderr and "positive number of hours" in r.stderr
    r = cli(dict(s3.env, DSBACKUP_S3_STALE_HOURS=value), "prune", s3.url("n/"),
            "--keep-last", "1")
    assert r.returncode == 2 and "DSBACKUP_S3_STALE_HOURS" in r.stderr
    assert "Traceback" not in r.stderr
