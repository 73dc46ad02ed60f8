"""Multipart archives are created only if the key is still free: our own multipart upload
(dsbackup/storage/s3multipart.py) completes with If-None-Match: *. Real CLI in a subprocess,
moto's server on 127.0.0.1, faults from the proxy in front of it (tests/support/s3server.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from s3server import FaultProxy, Rule

from dsbackup import datasets
from dsbackup.storage.s3api import S3Api, multipart_etag
from dsbackup.storage.s3config import client_config
from dsbackup.storage.s3multipart import KeyTaken, MultipartUpload


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=240)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A store whose archive takes several 5 MiB parts (~21 MB at level 0); made once, read
    only."""
    src = tmp_path_factory.mktemp("big") / "big"
    datasets.write_lmdb(str(src), datasets.iter_blocks(80))
    return src


def _proxied(s3, proxy, **extra):
    return dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_PART_MB="5", **extra)


def test_multipart_completion_is_conditional(s3, big):
    """The HEADs miss the other writer's object: the multipart completion carries
    If-None-Match: *, the server answers 412, the other object stays and our upload is
    aborted."""
    s3.client.put_object(Bucket=s3.bucket, Key="race.dsb", Body=b"the other writer's")
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("HEAD", "/race.dsb", times=2, status=404)]
    try:
        r = cli(_proxied(s3, proxy), "backup", f"lmdb:{big}", s3.url("race.dsb"), "--level",
                "0")
    finally:
        proxy.stop()
    assert proxy.rules[0].hits == 2
    assert r.returncode == 2, r.stderr
    line = one_line(r)
    assert "refused the conditional write" in line and s3.url("race.dsb") in line
    completions = [h for line, h in zip(proxy.seen, proxy.headers)
                   if line.startswith("POST") and "uploadId=" in line]
    assert len(completions) == 1 and completions[0].get("if-none-match") == "*"
    assert sum("partNumber=" in s for s in proxy.seen) >= 3  # a multipart upload
    assert s3.get("race.dsb") == b"the other writer's"
    assert s3.uploads() == []  # the refused upload was aborted, its parts gone


def test_overwrite_completes_without_the_condition(s3, big):
    assert cli(s3.env, "backup", f"lmdb:{big}", s3.url("o.dsb"), "--level", "0").returncode == 0
    first = s3.get("o.dsb")
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        r = cli(_proxied(s3, proxy), "backup", f"lmdb:{big}", s3.url("o.dsb"), "--level", "1",
                "--overwrite")
    finally:
        proxy.stop()
    assert r.returncode == 0, r.stderr
    completions = [h for line, h in zip(proxy.seen, proxy.headers)
                   if line.startswith("POST") and "uploadId=" in line]
    assert len(completions) == 1 and "if-none-match" not in completions[0]
    assert s3.get("o.dsb") != first and s3.uploads() == []
    assert cli(s3.env, "verify", s3.url("o.dsb")).returncode == 0


def test_a_409_on_completion_says_run_again_and_aborts(s3, big):
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("POST", "uploadId=", times=1, status=409,
                        body=b"<Error><Code>ConditionalRequestConflict</Code></Error>")]
    try:
        r = cli(_proxied(s3, proxy), "backup", f"lmdb:{big}", s3.url("c.dsb"), "--level", "0")
    finally:
        proxy.stop()
    assert r.returncode == 2 and "already exists" not in r.stderr
    line = one_line(r)
    assert "conflicting write" in line and "nothing was stored" in line
    assert "c.dsb" not in s3.objects() and s3.uploads() == []
    assert cli(s3.env, "backup", f"lmdb:{big}", s3.url("c.dsb"), "--level", "0"
               ).returncode == 0


def test_a_200_carrying_an_error_is_retried(s3, big):
    """S3 may answer CompleteMultipartUpload with 200 and an <Error> body: that is a
    failure, retried like a 5xx."""
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("POST", "uploadId=", times=1, status=200,
                        body=b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                             b'InternalError</Code><Message>We encountered an internal '
                             b'error.</Message></Error>')]
    try:
        r = cli(_proxied(s3, proxy), "backup", f"lmdb:{big}", s3.url("e.dsb"), "--level", "0")
    finally:
        proxy.stop()
    assert r.returncode == 0, r.stderr
    assert proxy.rules[0].hits == 1
    assert sum(s.startswith("POST") and "uploadId=" in s for s in proxy.seen) == 2
    assert s3.uploads() == [] and cli(s3.env, "verify", s3.url("e.dsb")).returncode == 0


def test_a_lost_answer_to_the_completion_is_recognised(s3, big):
    """The server completed the upload but its answer was lost (here: replaced by a 503):
    the retry is refused (412, the key is taken by our own object), and the object's ETag
    shows it is made of exactly our parts: success, not "already exists"."""
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("POST", "uploadId=", times=1, status=503, forward=True)]
    try:
        r = cli(_proxied(s3, proxy), "backup", f"lmdb:{big}", s3.url("l.dsb"), "--level", "0")
    finally:
        proxy.stop()
    assert proxy.rules[0].hits == 1
    assert r.returncode == 0, r.stderr
    assert cli(s3.env, "verify", s3.url("l.dsb")).returncode == 0


def test_parts_are_exact_and_signed_over_http(s3):
    """Parts are exactly part_size but the last; over http each part's SHA-256 is signed
    (x-amz-content-sha256 is the body's hash, not UNSIGNED-PAYLOAD); the ETag of the
    object is the one computed from the parts' ETags."""
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        cfg = dict(client_config(), endpoint=proxy.endpoint)
        api = S3Api(cfg, timeout_s=10, retries=1)
        up = MultipartUpload(api, s3.bucket, "p.bin", part_size=5 << 20, concurrency=2)
        pieces = [bytes([i]) * (3 << 20) for i in range(4)]  # 12 MiB in 3 MiB pieces
        for p in pieces:
            up.write(p)
        up.complete(replace=False)
        with pytest.raises(KeyTaken):  # the key is taken now: a second upload is refused
            again = MultipartUpload(api, s3.bucket, "p.bin", part_size=5 << 20, concurrency=1)
            again.write(b"x" * (6 << 20))
            try:
                again.complete(replace=False)
            finally:
                again.abort()
    finally:
        proxy.stop()
    data = b"".join(pieces)
    assert s3.get("p.bin") == data
    parts = [(line, h) for line, h in zip(proxy.seen, proxy.headers) if "partNumber=" in line]
    sizes = sorted(int(h["content-length"]) for _, h in parts[:3])
    assert sizes == sorted([5 << 20, 5 << 20, 2 << 20])
    for line, h in parts[:3]:
        n = int(line.split("partNumber=")[1].split("&")[0])
        chunk = data[(n - 1) * (5 << 20):n * (5 << 20)]
        assert h["x-amz-content-sha256"] == hashlib.sha256(chunk).hexdigest()
    etag = s3.client.head_object(Bucket=s3.bucket, Key="p.bin")["ETag"].strip('"')
    assert etag == multipart_etag(up.parts_sent)
    assert s3.uploads() == []


def test_multipart_etag_of_non_md5_etags_is_unknown():
    assert multipart_etag(['"abc"']) == ""
    one = hashlib.md5(b"x").hexdigest()
    assert multipart_etag([f'"{one}"']) == \
        f"{hashlib.md5(bytes.fromhex(one)).hexdigest()}-1"
