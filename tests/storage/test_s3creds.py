"""The AWS credential chain of our own signed S3 requests (dsbackup/storage/s3creds.py): a
role's temporary credentials from EC2 instance metadata (IMDSv2), container credentials or
STS web identity, each played by a fake service on 127.0.0.1 (tests/support/credserver.py),
against a moto server that accepts nothing but those temporary keys (IAM authentication on:
signature and session token checked). Before, our requests knew only keys from the
environment or ~/.aws: prune of a prefix on an instance role could not list its unfinished
uploads, kept every archive and exited 1, and never aborted a stale upload."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import pytest
from credserver import IMDS_TOKEN, ROLE, ROLE_ARN, AuthMoto, CredServer, rotating

from dsbackup import datasets
from dsbackup.errors import S3ApiError
from dsbackup.storage import s3creds

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
WEB_TOKEN = "eyJhbGciOiJSUzI1NiJ9.web-identity-SECRET-token.sig"


def cli(env, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def moto_auth():
    m = AuthMoto("dsb-creds")
    yield m
    m.stop()


@pytest.fixture
def role_env(moto_auth, monkeypatch):
    """No keys anywhere: the environment of a process on an instance, task or pod with a
    role; for CLI children and for this process (in-process tests)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "DSBACKUP_S3_"))}
    env.update(PYTHONPATH=os.path.abspath(SRC), AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL=moto_auth.endpoint, AWS_CONFIG_FILE="/nonexistent/aws-config",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
               DSBACKUP_S3_RETRIES="1", DSBACKUP_S3_TIMEOUT="10")
    for k in list(os.environ):
        if k.startswith(("AWS_", "DSBACKUP_S3_")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith(("AWS_", "DSBACKUP_S3_")):
            monkeypatch.setenv(k, v)
    from dsbackup.storage import s3, s3config

    monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
    monkeypatch.setattr(s3config, "_tuned", False)
    monkeypatch.setattr(s3config, "_stale_given", False)
    s3.reset()
    yield env
    s3.reset()


def _secrets(moto_auth) -> list[str]:
    return [k[f] for k in moto_auth.keys for f in ("AccessKeyId", "SecretAccessKey",
                                                   "SessionToken")]


def test_prune_on_an_instance_role_keeps_the_parent_and_aborts_a_stale_upload(
        moto_auth, role_env, tmp_path):
    imds = CredServer(rotating(moto_auth.keys, timedelta(hours=6)))
    env = dict(role_env, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    s3 = moto_auth.client()
    prefix = f"n{uuid.uuid4().hex[:8]}/"
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(300))
    names = ["ipfs_20260101_000001.tar.gz", "ipfs_20260102_000001.tar.gz"]
    for n in names:
        r = cli(env, "backup", f"lmdb:{src}", tmp_path / n)
        assert r.returncode == 0, r.stderr
        s3.upload_file(str(tmp_path / n), moto_auth.bucket, prefix + n)
    running = prefix + "ipfs_20260103_000001.tar.gz"  # a backup being uploaded
    up = s3.create_multipart_upload(Bucket=moto_auth.bucket, Key=running)["UploadId"]
    s3.upload_part(Bucket=moto_auth.bucket, Key=running, UploadId=up, PartNumber=1,
                   Body=b"\x1f\x8b" + b"\0" * 100)
    url = f"s3://{moto_auth.bucket}/{prefix}"

    r = cli(env, "-v", "prune", url, "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr  # was 1: the uploads could not be listed
    out = json.loads(r.stdout)
    assert "live_writes_error" not in out and "stale_uploads_error" not in out
    assert out["deleted"] == [] and out["stale_uploads"] == []
    kept = {x["id"]: x for x in out["groups"]["ipfs"]}
    assert kept[names[0]]["keep"] and kept[names[0]]["rule"] == "maybe-parent"
    assert "ipfs_20260103_000001.tar.gz" in kept[names[0]]["reason"]
    # one fetch for the process, shared by the obstore client (LIST) and ours
    assert imds.count("PUT /latest/api/token") == 1
    assert imds.count(f"GET /latest/meta-data/iam/security-credentials/{ROLE}") == 1
    assert all(h.get("x-aws-ec2-metadata-token") == IMDS_TOKEN for c, h in
               zip(imds.calls, imds.headers) if c.startswith("GET"))

    time.sleep(1.5)  # the upload idle for more than a second: stale at 1 s
    r2 = cli(dict(env, DSBACKUP_S3_STALE_HOURS=str(1 / 3600)), "-v", "-v", "prune", url,
             "--keep-last", "1", "--json")
    assert r2.returncode == 0, r2.stderr
    out = json.loads(r2.stdout)
    assert [(u["location"], u["aborted"]) for u in out["stale_uploads"]] == [
        (f"s3://{moto_auth.bucket}/{running}", True)]
    assert out["deleted"] == [url + names[0]]
    assert s3.list_multipart_uploads(Bucket=moto_auth.bucket, Prefix=prefix).get(
        "Uploads", []) == []
    listed = s3.list_objects_v2(Bucket=moto_auth.bucket, Prefix=prefix)["Contents"]
    assert [o["Key"] for o in listed] == [prefix + names[1]]
    for secret in _secrets(moto_auth) + [IMDS_TOKEN]:
        assert secret not in r.stdout + r.stderr + r2.stdout + r2.stderr
    imds.stop()


def test_backup_and_verify_on_web_identity_use_our_conditional_multipart_upload(
        moto_auth, role_env, tmp_path):
    sts = CredServer(rotating(moto_auth.keys, timedelta(hours=1)))
    token_file = tmp_path / "token"
    token_file.write_text(WEB_TOKEN + "\n")
    env = dict(role_env, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file), AWS_ROLE_ARN=ROLE_ARN,
               AWS_ROLE_SESSION_NAME="dsb-test", AWS_ENDPOINT_URL_STS=sts.url,
               AWS_EC2_METADATA_DISABLED="true", DSBACKUP_S3_PART_MB="5")
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_blocks(26))  # ~6.5 MB: 2 parts of 5 MiB
    key = f"w{uuid.uuid4().hex[:8]}/full.dsb"
    url = f"s3://{moto_auth.bucket}/{key}"
    r = cli(env, "-v", "-v", "backup", f"lmdb:{src}", url, "--level", "0", "--workers", "1")
    assert r.returncode == 0, r.stderr
    etag = moto_auth.client().head_object(Bucket=moto_auth.bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-2")  # a multipart upload (ours: obstore's is gone)
    form = sts.sts_forms[0]
    assert form["Action"] == ["AssumeRoleWithWebIdentity"] and form["RoleArn"] == [ROLE_ARN]
    assert form["RoleSessionName"] == ["dsb-test"] and form["WebIdentityToken"] == [WEB_TOKEN]
    assert len(sts.sts_forms) == 1  # one exchange for the whole backup
    assert "authorization" not in sts.headers[0]  # unsigned
    r2 = cli(env, "verify", url)
    assert r2.returncode == 0, r2.stderr
    # the object is there: a second backup to the key is refused, nothing replaced
    r3 = cli(env, "backup", f"lmdb:{src}", url, "--level", "0", "--workers", "1")
    assert r3.returncode == 2 and "already exists" in r3.stderr
    for out in (r, r2, r3):
        for secret in _secrets(moto_auth) + [WEB_TOKEN]:
            assert secret not in out.stdout + out.stderr
    sts.stop()


def test_container_credentials_send_the_token_from_its_file(moto_auth, role_env, tmp_path,
                                                            monkeypatch):
    from dsbackup.storage.s3api import S3Api

    srv = CredServer(rotating(moto_auth.keys, timedelta(hours=6)))
    srv.container_token = "container-auth-SECRET-token"
    token_file = tmp_path / "auth"
    token_file.write_text(srv.container_token + "\n")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{srv.url}/container/v1/creds")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    api = S3Api.from_config()
    assert list(api.list_multipart_uploads(moto_auth.bucket, "c/")) == []
    assert srv.calls == ["GET /container/v1/creds"]
    assert srv.headers[0]["authorization"] == srv.container_token
    # a wrong token: the service refuses (401), one line naming the source, token scrubbed
    token_file.write_text("another-SECRET-token-value")
    s3creds.reset()
    with pytest.raises(S3ApiError) as exc:
        S3Api.from_config().list_multipart_uploads(moto_auth.bucket, "c/").__next__()
    msg = str(exc.value)
    assert msg == (f"S3 credentials from container credentials ({srv.url}/container/v1/"
                   "creds): HTTP 401")
    srv.stop()


def test_container_uri_rules(role_env, monkeypatch):
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/abc")
    assert s3creds.Container.from_env().url == "http://169.254.170.2/v2/credentials/abc"
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    for ok in ("http://127.0.0.2:80/x", "http://169.254.170.23/v1/credentials",
               "http://[fd00:ec2::23]/v1/credentials", "http://localhost:9/x"):
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", ok)
        assert s3creds.Container.from_env().url == ok
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://evil.example/creds")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(S3ApiError, match=r"^S3 credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI "
                       r"'http://evil\.example/creds': the host must be a loopback address"):
        s3creds.chain()()


def test_web_identity_settings_are_checked(role_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "none"))
    with pytest.raises(S3ApiError, match="AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN"):
        s3creds.chain()()
    s3creds.reset()
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://sts.example")
    with pytest.raises(S3ApiError, match="plain http is refused except on the loopback"):
        s3creds.chain()()
    s3creds.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")
    with pytest.raises(S3ApiError, match=r"^S3 credentials from web identity \(AWS_WEB_"
                       r"IDENTITY_TOKEN_FILE .*none, STS http://127\.0\.0\.1:9\): cannot "
                       "read the token file"):
        s3creds.chain()()


def test_credentials_are_refreshed_before_they_expire(moto_auth, role_env, monkeypatch,
                                                      caplog):
    """Credentials valid for 3 s more than the advisory margin: used as they are, then,
    once inside the margin, fetched again (the next key of the rotation, which moto accepts
    too); a failed advisory refresh keeps the current ones (a warning); credentials inside
    the mandatory margin are fetched again by every caller, and the threads waiting for the
    first fetch share it."""
    from dsbackup.storage.s3api import S3Api

    life = timedelta(seconds=s3creds.ADVISORY_REFRESH_S + 3)
    monkeypatch.setattr(s3creds, "ADVISORY_RETRY_S", 0.0)
    imds = CredServer(rotating(moto_auth.keys, life))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    api = S3Api.from_config()
    threads = [threading.Thread(target=api.signed_headers, args=("GET", "/", ()))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert imds.count("PUT /latest/api/token") == 1  # 8 threads, one fetch
    first = api.creds.access_key_id
    assert list(api.list_multipart_uploads(moto_auth.bucket, "r/")) == []
    assert imds.count("PUT /latest/api/token") == 1
    time.sleep(3.2)  # inside the advisory margin now
    assert list(api.list_multipart_uploads(moto_auth.bucket, "r/")) == []
    assert imds.count("PUT /latest/api/token") == 2
    second = api.creds.access_key_id
    assert second != first and second == moto_auth.keys[1]["AccessKeyId"]
    # the obstore client asks the same cache (its LIST signed with the current key)
    from dsbackup.storage import s3

    assert s3.list_archives(s3.S3Location(moto_auth.bucket, "r/")) == []
    assert imds.count("PUT /latest/api/token") == 2
    time.sleep(3.2)
    imds.fail["PUT /latest/api/token"] = 500
    with caplog.at_level("WARNING", logger="dsbackup.storage.s3creds"):
        assert list(api.list_multipart_uploads(moto_auth.bucket, "r/")) == []
    assert api.creds.access_key_id == second  # kept
    assert "HTTP 500" in caplog.text and "using the current ones until" in caplog.text
    # credentials inside the mandatory margin: every caller fetches
    del imds.fail["PUT /latest/api/token"]
    s3creds.reset()
    imds.creds = rotating(moto_auth.keys, timedelta(seconds=s3creds.MANDATORY_REFRESH_S - 5))
    api = S3Api.from_config()
    before = imds.count("PUT /latest/api/token")
    api.signed_headers("GET", "/", ())
    api.signed_headers("GET", "/", ())
    assert imds.count("PUT /latest/api/token") == before + 2
    imds.stop()


def test_expired_credentials_from_the_source_are_an_error(role_env, monkeypatch, moto_auth):
    imds = CredServer(rotating(moto_auth.keys, timedelta(seconds=-60)))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    with pytest.raises(S3ApiError, match=r"^S3 credentials from instance metadata \(IMDSv2 at "
                       r"http://127.*\): the credentials it gave expired at .* \(is this "
                       "machine's clock right\\?\\)$"):
        s3creds.chain()()
    imds.stop()


def test_imdsv1_only_is_refused_in_words(role_env, monkeypatch, moto_auth):
    imds = CredServer(rotating(moto_auth.keys, timedelta(hours=6)))
    imds.fail["PUT /latest/api/token"] = 403
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    with pytest.raises(S3ApiError, match=r"answered HTTP 403; dsbackup does not fall back to "
                       "IMDSv1"):
        s3creds.chain()()
    assert imds.calls == ["PUT /latest/api/token"]  # no GET without a token
    imds.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_unreachable_instance_metadata_is_fast_and_one_line(role_env, how):
    """Off AWS (here: a closed port, or a listener that never answers) a command without
    keys fails within about a second of its own work, one line naming the source, exit 2;
    the failure is remembered, so its many requests do not each wait a second."""
    silent = None
    if how == "silent":
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the backlog; nothing is ever read
        port = silent.getsockname()[1]
    else:
        port = _free_port()
    env = dict(role_env, AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}")
    t = time.monotonic()
    r = cli(env, "prune", "s3://dsb-creds/x/", "--keep-last", "1")
    took = time.monotonic() - t
    if silent is not None:
        silent.close()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"S3 credentials from instance metadata (IMDSv2 at http://127.0.0.1:{port})" \
        in lines[0]
    assert ("no answer within 1 s" if how == "silent" else "ConnectionRefusedError") \
        in lines[0]
    assert "hop limit" in lines[0]
    assert took < 8, took  # the CLI's start included; the metadata wait is 1 s


def test_secrets_of_the_chain_are_scrubbed_from_errors(role_env, moto_auth, tmp_path):
    """The web identity token echoed in STS's error, and keys that the server refuses
    (moto names the key id), never reach the output: *** instead."""
    sts = CredServer(rotating(moto_auth.keys, timedelta(hours=1)))
    sts.sts_error = ("InvalidIdentityToken", f"the token {WEB_TOKEN} has expired")
    token_file = tmp_path / "token"
    token_file.write_text(WEB_TOKEN)
    env = dict(role_env, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file), AWS_ROLE_ARN=ROLE_ARN,
               AWS_ENDPOINT_URL_STS=sts.url)
    r = cli(env, "-v", "-v", "prune", f"s3://{moto_auth.bucket}/x/", "--keep-last", "1",
            "--json")
    assert r.returncode == 2, r.stderr
    assert "InvalidIdentityToken" in r.stdout + r.stderr and "***" in r.stdout + r.stderr
    assert WEB_TOKEN not in r.stdout + r.stderr and "Traceback" not in r.stderr
    sts.stop()
    fake = {"AccessKeyId": "ASIAFAKEKEYNOTKNOWN1", "SecretAccessKey": "fake-SECRET-key-value",
            "SessionToken": "fake-SESSION-token-value"}
    imds = CredServer(rotating([fake], timedelta(hours=6)))
    env = dict(role_env, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    for args in (("prune", f"s3://{moto_auth.bucket}/x/", "--keep-last", "1", "--json"),
                 ("ls", f"s3://{moto_auth.bucket}/x/a.dsb")):
        r = cli(env, "-v", "-v", *args)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        for secret in fake.values():
            assert secret not in r.stdout + r.stderr, (args, r.stdout, r.stderr)
    imds.stop()
