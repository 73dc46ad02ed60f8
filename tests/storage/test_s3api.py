"""The SigV4-signed requests of dsbackup/storage/s3api.py: the signatures of AWS's documented
S3 examples ("Signature Calculations for the Authorization Header", header-based auth), then
ListMultipartUploads / ListParts / AbortMultipartUpload against moto's server over HTTP."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest
from quiethttp import QuietHTTPServer
from s3server import ACCESS_KEY, SECRET_KEY

from dsbackup.storage.s3api import EMPTY_SHA256, Credentials, S3Api, S3ApiError, parse_time
from dsbackup.storage.s3sign import authorization, canonical_query, uri_encode

# the examples' credentials and time (AWS S3 API Reference, sig-v4-header-based-auth)
EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
DATE = "20130524T000000Z"
HOST = "examplebucket.s3.amazonaws.com"


def _sig(header: str) -> str:
    return header.rpartition("Signature=")[2]


@pytest.mark.parametrize("method,path,params,extra,payload,signature", [
    # GET Object, first 10 bytes
    ("GET", "/test.txt", [], {"Range": "bytes=0-9"}, EMPTY_SHA256,
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    # PUT Object: a '$' in the key, a Date and a storage-class header
    ("PUT", "/" + uri_encode("test$file.text"), [],
     {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
     hashlib.sha256(b"Welcome to Amazon S3.").hexdigest(),
     "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
    # GET Bucket lifecycle: a parameter without a value signs as "lifecycle="
    ("GET", "/", [("lifecycle", "")], {}, EMPTY_SHA256,
     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    # GET Bucket (list objects): parameters sorted
    ("GET", "/", [("prefix", "J"), ("max-keys", "2")], {}, EMPTY_SHA256,
     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
])
def test_aws_documented_examples(method, path, params, extra, payload, signature):
    headers = {"Host": HOST, **extra, "x-amz-date": DATE, "x-amz-content-sha256": payload}
    auth = authorization(method, path, params, headers, payload, EXAMPLE, "us-east-1", DATE)
    assert _sig(auth) == signature
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
                           "us-east-1/s3/aws4_request,SignedHeaders=")
    # a changed byte anywhere changes it
    assert _sig(authorization(method, path + "x", params, headers, payload, EXAMPLE,
                              "us-east-1", DATE)) != signature


def test_uri_encoding_and_query_order():
    assert uri_encode("a b/c~d_e.f-g$ü") == "a%20b%2Fc~d_e.f-g%24%C3%BC"
    assert uri_encode("a b/c", keep_slash=True) == "a%20b/c"
    assert canonical_query([("uploads", ""), ("prefix", "n 1/"), ("encoding-type", "url")]) \
        == "encoding-type=url&prefix=n%201%2F&uploads="


def test_times_as_s3_writes_them():
    want = datetime(2026, 12, 6, 18, 0, 1, tzinfo=timezone.utc)
    assert parse_time("2026-12-06T18:00:01.000Z") == want
    assert parse_time("2026-12-06T18:00:01Z") == want
    assert parse_time("2026-12-06T19:00:01+01:00") == want
    with pytest.raises(S3ApiError):
        parse_time("yesterday")


def test_secrets_are_not_in_reprs():
    c = Credentials("AKIAX", "very-secret-key", "a-session-token")
    assert "very-secret-key" not in repr(c) and "a-session-token" not in repr(c)


def test_no_keys_and_no_source_is_one_line_at_the_first_request(monkeypatch):
    """Without keys the client asks the AWS chain (s3creds.py) at its first request; with
    nothing set up and instance metadata disabled that is one line, S3ApiError (exit 2)."""
    from dsbackup.storage import s3creds

    for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(s3creds, "_chain", None)
    api = S3Api({"region": "us-east-1"})
    with pytest.raises(S3ApiError, match=r"^no S3 credentials: none in the environment"):
        api.signed_headers("GET", "/b", ())


def _api(s3) -> S3Api:
    return S3Api({"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                  "region": "us-east-1", "endpoint": s3.endpoint}, timeout_s=10, retries=1)


def test_list_parts_and_abort_against_moto(s3):
    c = s3.client
    ids = {}
    for key in ("p/a b.dsb", "p/sub/x.dsb", "q/y.dsb"):
        ids[key] = c.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    for n in (1, 2, 3):
        c.upload_part(Bucket=s3.bucket, Key="p/a b.dsb", UploadId=ids["p/a b.dsb"],
                      PartNumber=n, Body=b"x" * (5 << 20 if n < 3 else 10))
    api = _api(s3)
    got = list(api.list_multipart_uploads(s3.bucket, "p/"))
    # delimiter "/": sub-prefixes are left out (moto ignores the delimiter and lists them)
    assert sorted(u.key for u, _ in got) in (["p/a b.dsb"], ["p/a b.dsb", "p/sub/x.dsb"])
    assert all(u.upload_id == ids[u.key] for u, _ in got)
    now = got[0][1]
    assert abs((now - datetime.now(timezone.utc)).total_seconds()) < 120  # the server's Date
    parts = list(api.list_parts(s3.bucket, "p/a b.dsb", ids["p/a b.dsb"]))
    assert [p.number for p in parts] == [1, 2, 3]
    assert sum(p.size for p in parts) == 2 * (5 << 20) + 10
    assert all(abs((p.last_modified - now).total_seconds()) < 120 for p in parts)
    assert api.abort_multipart_upload(s3.bucket, "p/a b.dsb", ids["p/a b.dsb"]) is True
    assert api.abort_multipart_upload(s3.bucket, "p/a b.dsb", ids["p/a b.dsb"]) is False
    assert sorted(s3.uploads()) == ["p/sub/x.dsb", "q/y.dsb"]
    with pytest.raises(S3ApiError) as e:
        list(api.list_multipart_uploads("no-such-bucket-here", ""))
    assert e.value.status == 404 and "NoSuchBucket" in str(e.value)


def test_paged_list_parts(s3):
    """ListParts follows NextPartNumberMarker (moto pages parts; max-parts=1 here)."""
    c = s3.client
    uid = c.create_multipart_upload(Bucket=s3.bucket, Key="k.dsb")["UploadId"]
    for n in (1, 2, 3):
        c.upload_part(Bucket=s3.bucket, Key="k.dsb", UploadId=uid, PartNumber=n, Body=b"y")
    api = _api(s3)
    seen = []
    orig = api.request

    def one_per_page(method, bucket, key="", params=()):
        seen.append(dict(params))
        return orig(method, bucket, key, [*params, ("max-parts", "1")])

    api.request = one_per_page
    assert [p.number for p in api.list_parts(s3.bucket, "k.dsb", uid)] == [1, 2, 3]
    assert [s.get("part-number-marker") for s in seen] == [None, "1", "2"]


def test_unreachable_server_error_shows_no_secret(s3):
    # moto checks signatures only when asked; the error path still must not show secrets
    api = S3Api({"access_key_id": ACCESS_KEY, "secret_access_key": "wrong" + SECRET_KEY,
                 "endpoint": "http://127.0.0.1:9"}, timeout_s=2, retries=0)
    with pytest.raises(S3ApiError) as e:
        list(api.list_multipart_uploads(s3.bucket, ""))
    assert SECRET_KEY not in str(e.value) and "failed" in str(e.value)


PAGE = """<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Bucket>b</Bucket><EncodingType>url</EncodingType>{uploads}
<IsTruncated>{more}</IsTruncated>{markers}</ListMultipartUploadsResult>"""


def test_list_multipart_uploads_follows_the_markers_and_decodes_keys():
    """moto never pages this listing: a small server of two pages, as S3 writes them."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            q = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
            seen.append((q, self.headers.get("Authorization", ""),
                         self.headers.get("x-amz-security-token")))
            up = "<Upload><Key>{}</Key><UploadId>{}</UploadId>" \
                 "<Initiated>2026-12-01T00:00:00.000Z</Initiated></Upload>"
            if "key-marker" not in q:
                body = PAGE.format(uploads=up.format("n/a%20b.dsb", "u1"), more="true",
                                   markers="<NextKeyMarker>n/a%20b.dsb</NextKeyMarker>"
                                           "<NextUploadIdMarker>u1</NextUploadIdMarker>")
            else:
                body = PAGE.format(uploads=up.format("n/c%2Bd.dsb", "u2"), more="false",
                                   markers="")
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        api = S3Api({"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                     "session_token": "tok-secret", "region": "eu-west-1",
                     "endpoint": f"http://127.0.0.1:{httpd.server_address[1]}"},
                    timeout_s=5, retries=0)
        got = [(u.key, u.upload_id) for u, _ in api.list_multipart_uploads("b", "n/")]
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert got == [("n/a b.dsb", "u1"), ("n/c+d.dsb", "u2")]
    assert [q.get("key-marker") for q, _, _ in seen] == [None, ["n/a b.dsb"]]
    assert [q.get("upload-id-marker") for q, _, _ in seen] == [None, ["u1"]]
    for q, auth, token in seen:
        assert q["uploads"] == [""] and q["prefix"] == ["n/"] and q["delimiter"] == ["/"]
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
        assert "/eu-west-1/s3/aws4_request" in auth
        assert "host;x-amz-content-sha256;x-amz-date;x-amz-security-token" in auth
        assert token == "tok-secret"


@pytest.fixture
def moto_with_auth():
    """A moto server of its own that checks every signature (botocore's SigV4 on its side)
    after the first 4 requests, which create an IAM user with S3 rights, its key, a bucket."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                            env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                  aws_secret_access_key="y")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="dsb")
        key = iam.create_access_key(UserName="dsb")["AccessKey"]
        iam.put_user_policy(UserName="dsb", PolicyName="s3", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*",'
            '"Resource":"*"}]}'))
        boto3.client("s3", **kw).create_bucket(Bucket="authed")
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_signatures_are_accepted_by_a_server_that_checks_them(moto_with_auth, tmp_path):
    import os
    import subprocess
    import sys
    import time

    import boto3

    from dsbackup import datasets

    endpoint, key_id, secret = moto_with_auth
    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=key_id, aws_secret_access_key=secret)
    odd = "n/a b+c=d&e~(1).dsb"  # every character class the canonical URI/query encodes
    uid = c.create_multipart_upload(Bucket="authed", Key=odd)["UploadId"]
    c.upload_part(Bucket="authed", Key=odd, UploadId=uid, PartNumber=1, Body=b"q" * 100)
    api = S3Api({"access_key_id": key_id, "secret_access_key": secret, "region": "us-east-1",
                 "endpoint": endpoint}, timeout_s=10, retries=0)
    assert [u.key for u, _ in api.list_multipart_uploads("authed", "n/")] == [odd]
    assert [p.size for p in api.list_parts("authed", odd, uid)] == [100]
    bad = S3Api({"access_key_id": key_id, "secret_access_key": "wrong-" + secret,
                 "endpoint": endpoint}, timeout_s=10, retries=0)
    with pytest.raises(S3ApiError) as e:
        list(bad.list_multipart_uploads("authed", "n/"))
    assert e.value.status == 403 and "SignatureDoesNotMatch" in str(e.value)
    assert secret not in str(e.value) and "Signature=" not in str(e.value)
    assert api.abort_multipart_upload("authed", odd, uid) is True
    assert c.list_multipart_uploads(Bucket="authed").get("Uploads", []) == []

    # the CLI end to end: obstore's requests and ours, both checked
    uid = c.create_multipart_upload(Bucket="authed", Key="n/killed.dsb")["UploadId"]
    c.upload_part(Bucket="authed", Key="n/killed.dsb", UploadId=uid, PartNumber=1, Body=b"k")
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(200))
    time.sleep(2.5)
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"), AWS_ACCESS_KEY_ID=key_id,
               AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint,
               DSBACKUP_S3_STALE_HOURS=str(1 / 3600), AWS_CONFIG_FILE="/nonexistent/c",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent/k")
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                        "s3://authed/n/new.dsb"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "s3://authed/n/killed.dsb: aborted an unfinished multipart upload" in r.stderr
    assert c.list_multipart_uploads(Bucket="authed").get("Uploads", []) == []
    assert secret not in r.stderr + r.stdout
