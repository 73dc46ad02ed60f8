"""benchmarks/s3server (the benchmark's Go S3-protocol server, the `go` column of
benchmarks/s3.py) answers as S3 does the requests our client and boto3 make, and stores
durably what it acknowledges. Skipped without a Go toolchain (a benchmark-only tool)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import s3 as bench  # noqa: E402

BUCKET = "bench-bucket"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if bench.go_binary() is None:
        pytest.skip("no Go toolchain: benchmarks/s3server cannot be built")
    work = tmp_path_factory.mktemp("gosrv")
    exe = bench.build_go_server(work)
    data = work / "data"
    data.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([str(exe), "-dir", str(data), "-addr", f"127.0.0.1:{port}"])
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
    import boto3
    from botocore.config import Config

    c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="AKIAX", aws_secret_access_key="x",
                     config=Config(retries={"max_attempts": 1}))
    c.create_bucket(Bucket=BUCKET)
    yield c, data / BUCKET, port
    p.terminate()
    p.wait(10)


def _code(exc_info) -> tuple[str, int]:
    r = exc_info.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def test_put_get_ranges_and_conditions(server):
    from botocore.exceptions import ClientError

    c, bucket_dir, _ = server
    c.put_object(Bucket=BUCKET, Key="a/b.txt", Body=b"hello world")
    assert (bucket_dir / "a" / "b.txt").read_bytes() == b"hello world"
    etag = c.head_object(Bucket=BUCKET, Key="a/b.txt")["ETag"]
    r = c.get_object(Bucket=BUCKET, Key="a/b.txt", Range="bytes=6-")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert r["ContentRange"] == "bytes 6-10/11" and r["Body"].read() == b"world"
    r = c.get_object(Bucket=BUCKET, Key="a/b.txt", Range="bytes=-100")  # longer: all of it
    assert r["ContentRange"] == "bytes 0-10/11" and r["Body"].read() == b"hello world"
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key="a/b.txt", Range="bytes=11-20")
    assert _code(e) == ("InvalidRange", 416)
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=BUCKET, Key="a/b.txt", Body=b"other", IfNoneMatch="*")
    assert _code(e) == ("PreconditionFailed", 412)
    assert (bucket_dir / "a" / "b.txt").read_bytes() == b"hello world"  # not replaced
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key="a/b.txt", IfMatch='"0123"')
    assert _code(e) == ("PreconditionFailed", 412)
    assert c.get_object(Bucket=BUCKET, Key="a/b.txt", IfMatch=etag)["Body"].read() == b"hello world"
    c.put_object(Bucket=BUCKET, Key="empty", Body=b"")
    with pytest.raises(ClientError) as e:  # S3 refuses any range of an empty object
        c.get_object(Bucket=BUCKET, Key="empty", Range="bytes=-10")
    assert _code(e) == ("InvalidRange", 416)
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket=BUCKET, Key="missing")
    assert _code(e)[1] == 404
    with pytest.raises(ClientError) as e:  # keys are files: no '..' segment
        c.put_object(Bucket=BUCKET, Key="x/../../escape", Body=b"x")
    assert _code(e) == ("InvalidArgument", 400)
    c.delete_object(Bucket=BUCKET, Key="a/b.txt")
    c.delete_object(Bucket=BUCKET, Key="a/b.txt")  # gone already: still 204
    c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "empty"}]})
    assert not (bucket_dir / "a").exists() and not (bucket_dir / "empty").exists()


def test_multipart_in_place_resent_and_listed(server, tmp_path):
    from botocore.exceptions import ClientError

    c, bucket_dir, _ = server
    blob = os.urandom((5 << 20) + 1000)
    u = c.create_multipart_upload(Bucket=BUCKET, Key="mp/obj")["UploadId"]
    e2 = c.upload_part(Bucket=BUCKET, Key="mp/obj", UploadId=u, PartNumber=2,
                       Body=blob[5 << 20:])["ETag"]  # the small last part first
    e1 = c.upload_part(Bucket=BUCKET, Key="mp/obj", UploadId=u, PartNumber=1,
                       Body=blob[:5 << 20])["ETag"]
    e1b = c.upload_part(Bucket=BUCKET, Key="mp/obj", UploadId=u, PartNumber=1,
                        Body=blob[:5 << 20])["ETag"]  # sent again: a new ETag
    assert e1 != e1b
    ups = c.list_multipart_uploads(Bucket=BUCKET, Prefix="mp/")["Uploads"]
    assert [(x["Key"], x["UploadId"]) for x in ups] == [("mp/obj", u)]
    parts = c.list_parts(Bucket=BUCKET, Key="mp/obj", UploadId=u)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts] == [
        (1, 5 << 20, e1b), (2, 1000, e2)]
    assert not (bucket_dir / "mp" / "obj").exists()  # nothing visible before completion
    done = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
    with pytest.raises(ClientError) as e:  # the replaced part's ETag
        c.complete_multipart_upload(Bucket=BUCKET, Key="mp/obj", UploadId=u, MultipartUpload=done)
    assert _code(e) == ("InvalidPart", 400)
    done["Parts"][0]["ETag"] = e1b
    r = c.complete_multipart_upload(Bucket=BUCKET, Key="mp/obj", UploadId=u, MultipartUpload=done)
    # S3's multipart ETag: MD5 of the parts' binary ETags, "-", their count
    want = hashlib.md5(b"".join(bytes.fromhex(x.strip('"')) for x in (e1b, e2))).hexdigest()
    assert r["ETag"] == f'"{want}-2"'
    assert (bucket_dir / "mp" / "obj").read_bytes() == blob
    assert c.head_object(Bucket=BUCKET, Key="mp/obj")["ETag"] == r["ETag"]
    # the same completion again (an answer lost): the same answer
    again = c.complete_multipart_upload(Bucket=BUCKET, Key="mp/obj", UploadId=u,
                                        MultipartUpload=done)
    assert again["ETag"] == r["ETag"]
    # conditional completion onto an existing key: 412, the upload stays for an abort
    u2 = c.create_multipart_upload(Bucket=BUCKET, Key="mp/obj")["UploadId"]
    e = c.upload_part(Bucket=BUCKET, Key="mp/obj", UploadId=u2, PartNumber=1, Body=b"x")["ETag"]
    with pytest.raises(ClientError) as ei:
        c.complete_multipart_upload(Bucket=BUCKET, Key="mp/obj", UploadId=u2, IfNoneMatch="*",
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
    assert _code(ei) == ("PreconditionFailed", 412)
    c.abort_multipart_upload(Bucket=BUCKET, Key="mp/obj", UploadId=u2)
    assert "Uploads" not in c.list_multipart_uploads(Bucket=BUCKET)
    assert (bucket_dir / "mp" / "obj").read_bytes() == blob
    with pytest.raises(ClientError) as ei:
        c.upload_part(Bucket=BUCKET, Key="mp/obj", UploadId=u2, PartNumber=1, Body=b"x")
    assert _code(ei) == ("NoSuchUpload", 404)
    # boto3's managed transfer: parts in flight on threads, ranged reads with If-Match
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(21 << 20))
    c.upload_file(str(src), BUCKET, "mp/managed")
    c.download_file(BUCKET, "mp/managed", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == src.read_bytes()


def test_list_objects_pages_and_prefixes(server):
    c, _, _ = server
    keys = ["l/a", "l/b/1", "l/b/2", "l/c", "l/d e+f"]
    for k in keys:
        c.put_object(Bucket=BUCKET, Key=k, Body=k.encode())
    got, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = c.list_objects_v2(Bucket=BUCKET, Prefix="l/", MaxKeys=2, **kw)
        got += [o["Key"] for o in r.get("Contents", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert got == keys
    r = c.list_objects_v2(Bucket=BUCKET, Prefix="l/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["l/a", "l/c", "l/d e+f"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["l/b/"]
    assert [o["Size"] for o in r["Contents"]] == [3, 3, 7]


def test_our_client_backs_up_and_restores(server, tmp_path):
    """dsbackup's own client end to end: multipart backup (conditional completion), a second
    backup to the same key refused, deep verify and restore through ranged GETs."""
    from dsbackup import datasets

    _, bucket_dir, port = server
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_blocks(120), sort=True)  # ~30 MiB: parts
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), AWS_ACCESS_KEY_ID="AKIAX",
               AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent")
    url = f"s3://{BUCKET}/c/one.dsb"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    r = cli("backup", f"lmdb:{src}", url, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert (bucket_dir / "c" / "one.dsb").stat().st_size > (16 << 20)
    r = cli("backup", f"lmdb:{src}", url, "--workers", "2")
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli("verify", url)
    assert r.returncode == 0, r.stderr
    r = cli("restore", url, f"lmdb:{tmp_path / 'out'}", "--workers", "2")
    assert r.returncode == 0, r.stderr
    r = cli("verify", str(bucket_dir / "c" / "one.dsb"))  # the file itself: a whole archive
    assert r.returncode == 0, r.stderr


def test_benchmark_go_column_tiny(tmp_path, cli_env):
    """benchmarks/s3.py's go column end to end at 2 MiB; without a toolchain ($GO naming
    none) the column is skipped with a message, the others still run."""
    if bench.go_binary() is None:
        pytest.skip("no Go toolchain")
    out = tmp_path / "s3.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "s3.py"), "--mb", "2", "--rounds", "1",
           "--work-dir", str(tmp_path)]
    r = subprocess.run(cmd + ["--servers", "go", "--json", str(out)], env=cli_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    doc = json.loads(out.read_text())
    assert set(doc["ratios"]) == {"go"} and all(v > 0 for v in doc["ratios"]["go"].values())
    assert "benchmarks/s3server" in doc["servers"]["go"]
    # durable by itself: the benchmark's own fsync is not needed (recorded as 0)
    assert doc["median_server_fsync_s"]["backup-s3:go"] == 0.0
    assert doc["server_peak_rss_bytes"]["go"] > 0
    assert doc["ours_vs_upload_file_best"]["go"] > 0  # (L + U) / max(L, U): rows apart, noisy
    r = subprocess.run(cmd + ["--servers", "go"], env=dict(cli_env, GO="/nonexistent/go"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "go column (benchmarks/s3server) is skipped" in r.stderr
    assert "no server left" in r.stderr
    assert not list(tmp_path.glob("dsbackup-s3bench-*")), "work directory left behind"
