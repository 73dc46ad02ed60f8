"""Archives in S3-compatible object storage, end to end: the real CLI in a subprocess, the
production client (obstore) over HTTP to moto's server on 127.0.0.1 (tests/support/s3server.py),
faults from a proxy in front of it. docs/STORAGE.md."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from lmdb_files import read_all
from s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, Rule

from dsbackup import datasets


def cli(env: dict[str, str], *args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small LMDB store: blocks and small records (made once; read only: a test that
    changes it works on a copy)."""
    src = tmp_path_factory.mktemp("store") / "src"
    recs = list(datasets.iter_blocks(24)) + list(datasets.iter_small(3000))
    datasets.write_lmdb(str(src), iter(recs))
    return src


def test_full_and_incremental_chain_round_trip_equal_local(s3, store, tmp_path):
    store = shutil.copytree(store, tmp_path / "src")  # changed below
    env = s3.env
    local = tmp_path / "full.dsb"
    assert cli(env, "backup", f"lmdb:{store}", local, "--include-metadata").returncode == 0
    r = cli(env, "backup", f"lmdb:{store}", s3.url("node1/full.dsb"), "--include-metadata",
            "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)["backup"]
    assert meta["path"] == s3.url("node1/full.dsb")
    assert s3.objects() == ["node1/full.dsb"] and s3.uploads() == []
    for target, archive in (("a", local), ("b", s3.url("node1/full.dsb"))):
        r = cli(env, "restore", archive, f"lmdb:{tmp_path / target}")
        assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "b") == read_all(tmp_path / "a") == read_all(store)

    # an incremental chain in the bucket: the parent is found under the same prefix
    datasets.write_lmdb(str(store), datasets.iter_small(500, seed=9))
    for name, parent in (("inc1.dsb", "full.dsb"), ("inc2.dsb", "inc1.dsb")):
        r = cli(env, "backup", f"lmdb:{store}", s3.url(f"node1/{name}"), "--include-metadata",
                "--parent", s3.url(f"node1/{parent}"))
        assert r.returncode == 0, r.stderr
    r = cli(env, "verify", s3.url("node1/inc2.dsb"), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["parents"] == [s3.url("node1/inc1.dsb"), s3.url("node1/full.dsb")]
    assert report["referenced_chunks"] > 0
    r = cli(env, "restore", s3.url("node1/inc2.dsb"), f"lmdb:{tmp_path / 'c'}")
    assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "c") == read_all(store)
    r = cli(env, "ls", s3.url("node1/inc2.dsb"), "--json")
    assert r.returncode == 0, r.stderr
    r = cli(env, "inspect", s3.url("node1/inc2.dsb"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["backup"]["path"] == s3.url("node1/inc2.dsb")


def test_an_existing_object_is_never_replaced(s3, store):
    s3.client.put_object(Bucket=s3.bucket, Key="a.dsb", Body=b"not ours")
    r = cli(s3.env, "backup", f"lmdb:{store}", s3.url("a.dsb"))
    assert r.returncode == 2
    assert "already exists" in one_line(r) and s3.url("a.dsb") in r.stderr
    assert s3.get("a.dsb") == b"not ours" and s3.uploads() == []


def test_an_object_appearing_after_the_last_head_is_refused_by_the_server(s3, store):
    """The HEADs do not see the object (another writer's, just completed): the archive's one
    PUT carries If-None-Match: *, the server answers 412, and that is "already exists"."""
    s3.client.put_object(Bucket=s3.bucket, Key="race.dsb", Body=b"the other writer's")
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("HEAD", "/race.dsb", times=2, status=404)]
    try:
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)
        r = cli(env, "backup", f"lmdb:{store}", s3.url("race.dsb"), "--json")
    finally:
        proxy.stop()
    assert proxy.rules[0].hits == 2
    assert r.returncode == 2, r.stderr
    assert "refused the conditional write" in one_line(r) and s3.url("race.dsb") in r.stderr
    err = json.loads(r.stdout)
    assert err["error"] == "ArchiveExistsError" and err["exit_code"] == 2
    assert s3.get("race.dsb") == b"the other writer's" and s3.uploads() == []
    assert not any(s.startswith("POST") for s in proxy.seen)  # one PUT, no multipart


def test_a_conflicting_write_409_is_not_taken_for_an_existing_object(s3, store):
    """AWS answers 409 ConditionalRequestConflict when a concurrent write or delete raced
    the conditional PUT: nothing landed, and the message says to run again."""
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("PUT", "/c409.dsb", times=1, status=409)]
    try:
        r = cli(dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint), "backup", f"lmdb:{store}",
                s3.url("c409.dsb"))
    finally:
        proxy.stop()
    assert proxy.rules[0].hits == 1
    assert r.returncode == 2 and "already exists" not in r.stderr
    line = one_line(r)
    assert s3.url("c409.dsb") in line and "conflicting write" in line
    assert "nothing was stored" in line
    assert "c409.dsb" not in s3.objects()
    r = cli(s3.env, "backup", f"lmdb:{store}", s3.url("c409.dsb"))  # the next run succeeds
    assert r.returncode == 0, r.stderr


def test_missing_object_and_missing_parent_exit_2_naming_them(s3, store):
    r = cli(s3.env, "verify", s3.url("none/such.dsb"))
    assert r.returncode == 2 and s3.url("none/such.dsb") in one_line(r)
    r = cli(s3.env, "restore", s3.url("none/such.dsb"), "lmdb:/nonexistent/x")
    assert r.returncode == 2 and "no such archive" in one_line(r)
    assert cli(s3.env, "backup", f"lmdb:{store}", s3.url("p/full.dsb")).returncode == 0
    r = cli(s3.env, "backup", f"lmdb:{store}", s3.url("p/inc.dsb"), "--parent",
            s3.url("p/full.dsb"))
    assert r.returncode == 0, r.stderr
    s3.client.delete_object(Bucket=s3.bucket, Key="p/full.dsb")
    r = cli(s3.env, "verify", s3.url("p/inc.dsb"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "full.dsb" in r.stderr and "is missing" in r.stderr and s3.url("p/") in r.stderr
    r = cli(s3.env, "restore", s3.url("p/inc.dsb"), "lmdb:/nonexistent/y")
    assert r.returncode == 2 and "full.dsb" in one_line(r)


def test_truncated_object_fails_verify_with_exit_3(s3, store):
    assert cli(s3.env, "backup", f"lmdb:{store}", s3.url("t.dsb")).returncode == 0
    data = s3.get("t.dsb")
    s3.client.put_object(Bucket=s3.bucket, Key="t.dsb", Body=data[:len(data) // 2])
    for mode in ((), ("--quick",)):
        r = cli(s3.env, "verify", s3.url("t.dsb"), *mode)
        assert r.returncode == 3, r.stderr
    # a flipped byte in a chunk: deep verify names the chunk
    mid = len(data) // 3
    s3.client.put_object(Bucket=s3.bucket, Key="t.dsb",
                         Body=data[:mid] + bytes([data[mid] ^ 1]) + data[mid + 1:])
    r = cli(s3.env, "verify", s3.url("t.dsb"), "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["bad_chunks"]


def test_5xx_and_slow_part_uploads_are_retried_in_bounded_time(s3, tmp_path):
    src = tmp_path / "big"
    datasets.write_lmdb(str(src), datasets.iter_blocks(80))  # ~14 MB: three 5 MiB parts
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        proxy.rules = [
            Rule("PUT", "partNumber=2", times=2, status=503),
            Rule("PUT", "partNumber=1", times=1, status=None, delay=2.0),
            Rule("GET", "/r.dsb", times=1, status=500),  # not the stale-upload listing
        ]
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_PART_MB="5",
                   DSBACKUP_S3_RETRIES="4")
        t0 = time.monotonic()
        r = cli(env, "backup", f"lmdb:{src}", s3.url("r.dsb"), "--level", "0")
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        assert took < 90
        assert [rule.hits for rule in proxy.rules[:2]] == [2, 1]
        assert sum("partNumber=" in s for s in proxy.seen) >= 4  # 3 parts + the retries
        r = cli(env, "verify", s3.url("r.dsb"))  # its first GET gets a 500: retried
        assert r.returncode == 0, r.stderr
        assert proxy.rules[2].hits == 1
    finally:
        proxy.stop()


def test_server_gone_mid_upload_leaves_no_object_and_the_next_run_succeeds(s3, tmp_path):
    src = tmp_path / "big"
    datasets.write_lmdb(str(src), datasets.iter_blocks(160))  # ~40 MB: 8 parts
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    # one part in flight: the server goes away while parts remain to be sent
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_PART_MB="5",
               DSBACKUP_S3_RETRIES="2", DSBACKUP_S3_TIMEOUT="5", DSBACKUP_S3_CONCURRENCY="1")
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                          s3.url("gone.dsb"), "--level", "0", "--workers", "1"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any("partNumber=2" in s for s in proxy.seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    proxy.stop()  # the server is gone: connections refused from now on
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("dsbackup: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert s3.url("gone.dsb") in lines[0] and "upload failed" in lines[0]
    # the root cause: refused (a new connection) or reset (a kept-alive one, cut)
    assert "Connection re" in lines[0] and "nothing was stored" in lines[0]
    assert "gone.dsb" not in s3.objects()
    proxy2 = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        env = dict(env, AWS_ENDPOINT_URL=proxy2.endpoint)
        r = cli(env, "backup", f"lmdb:{src}", s3.url("gone.dsb"), "--level", "0")
        assert r.returncode == 0, r.stderr
        assert "gone.dsb" in s3.objects()
        assert cli(env, "verify", s3.url("gone.dsb"), "--quick").returncode == 0
    finally:
        proxy2.stop()


def test_credentials_never_appear_in_any_output(s3, store, tmp_path):
    outputs = []
    env = s3.env
    runs = [
        ("-v", "-v", "backup", f"lmdb:{store}", s3.url("s.dsb"), "--json"),
        ("-v", "-v", "verify", s3.url("s.dsb"), "--json"),
        ("-v", "inspect", s3.url("s.dsb"), "--json"),
        ("-v", "restore", s3.url("s.dsb"), f"lmdb:{tmp_path / 'r'}"),
        ("-v", "verify", s3.url("missing.dsb"), "--json"),
        ("-v", "backup", f"lmdb:{store}", s3.url("s.dsb"), "--json"),  # exists
        ("-v", "verify", "s3://no-such-bucket-here/x.dsb", "--json"),
        ("-v", "-v", "prune", s3.url(""), "--keep-last", "1", "--json"),  # + stale uploads
    ]
    for args in runs:
        outputs.append(cli(env, *args))
    # a server that is not there, and one that refuses the credentials
    outputs.append(cli(dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:9"), "-v", "verify",
                       s3.url("s.dsb"), "--json"))
    outputs.append(cli(dict(env, DSBACKUP_S3_RETRIES="0"), "-v", "--s3-endpoint",
                       "http://127.0.0.1:9", "backup", f"lmdb:{store}", s3.url("t.dsb")))
    prune = outputs.pop(7)
    assert prune.returncode == 0 and json.loads(prune.stdout)["stale_uploads"] == []
    assert [r.returncode for r in outputs[:4]] == [0, 0, 0, 0]
    assert all(r.returncode == 2 for r in outputs[4:]), [r.stderr for r in outputs[4:]]
    outputs.append(prune)
    for r in outputs:
        text = r.stdout + r.stderr
        assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_scrub_removes_registered_secrets():
    from dsbackup.storage.s3config import register_secret, scrub

    register_secret("hunter2-not-a-real-key")
    assert scrub("signature for hunter2-not-a-real-key failed") == "signature for *** failed"


def test_plain_http_endpoint_is_refused_off_loopback(s3, store):
    r = cli(s3.env, "--s3-endpoint", "http://example.com", "verify", s3.url("x.dsb"))
    assert r.returncode == 2 and "plain http is refused" in r.stderr



def test_interrupted_backup_aborts_its_upload(s3, tmp_path):
    import signal

    src = tmp_path / "big"
    datasets.write_lmdb(str(src), datasets.iter_blocks(160))  # ~40 MB: 8 parts
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("PUT", "partNumber=2", times=1, status=None, delay=3.0)]  # time to act
    # one part in flight: the backup waits on part 2 while it still has chunks to write
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_PART_MB="5",
               DSBACKUP_S3_CONCURRENCY="1")
    try:
        p = subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                              s3.url("int.dsb"), "--level", "0", "--workers", "1"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any("partNumber=2" in s for s in proxy.seen) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s3.uploads() == ["int.dsb"]
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130, err
        assert "Traceback" not in err
        assert s3.uploads() == [] and "int.dsb" not in s3.objects()
    finally:
        proxy.stop()
