"""`dsbackup prune s3://BUCKET/PREFIX/` deletes exactly what the local prune deletes (the same
retention code over a listing by prefix), ancestors of kept archives included."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from dsbackup import datasets


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=240)


def test_prune_of_a_prefix_matches_the_local_prune(s3, tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(2000))
    d = tmp_path / "arch"
    d.mkdir()
    names = ["ipfs_20260101_000001.tar.gz", "ipfs_20260102_000001.tar.gz",
             "ipfs_20260103_000001.tar.gz", "ipfs_20260104_000001.tar.gz"]
    for i, n in enumerate(names):
        extra = ("--parent", d / names[0]) if i == 3 else ()  # the newest: an incremental
        if i == 3:
            datasets.write_lmdb(str(src), datasets.iter_small(100, seed=5))
        r = cli(s3.env, "backup", f"lmdb:{src}", d / n, *extra)
        assert r.returncode == 0, r.stderr
    for n in names:  # the same archives in the bucket, beside an object of another prefix
        s3.client.upload_file(str(d / n), s3.bucket, f"node/{n}")
    s3.client.put_object(Bucket=s3.bucket, Key="other/ipfs_20260101_000001.tar.gz", Body=b"x")

    r = cli(s3.env, "prune", s3.url("node/"), "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    remote = json.loads(r.stdout)
    r = cli(s3.env, "prune", d, "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    local = json.loads(r.stdout)

    def names_of(paths):
        return sorted(p.rsplit("/", 1)[1] for p in paths)

    assert names_of(remote["deleted"]) == names_of(local["deleted"]) == names[1:3]
    assert remote["groups"] == local["groups"]  # same decisions, same reasons
    assert s3.objects("node/") == [f"node/{names[0]}", f"node/{names[3]}"]  # + the ancestor
    assert s3.objects("other/") == ["other/ipfs_20260101_000001.tar.gz"]
    assert sorted(p.name for p in d.iterdir()) == [names[0], names[3]]


def test_an_upload_in_progress_keeps_every_older_archive(s3, tmp_path):
    """A backup to the prefix being uploaded (an unfinished multipart upload at its key, not
    stale) may be an incremental on any older archive, and its parts cannot be read: prune
    keeps every archive created before the upload's last activity, with an hour's margin
    for the clocks (rule maybe-parent). Before, it
    deleted them. A stale upload (a killed backup's) protects nothing and is aborted."""
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(500))
    d = tmp_path / "arch"
    d.mkdir()
    names = ["ipfs_20260101_000001.tar.gz", "ipfs_20260102_000001.tar.gz"]
    for n in names:
        r = cli(s3.env, "backup", f"lmdb:{src}", d / n)
        assert r.returncode == 0, r.stderr
        s3.client.upload_file(str(d / n), s3.bucket, f"node/{n}")
    running = "node/ipfs_20260103_000001.tar.gz"
    up = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=running)["UploadId"]
    s3.client.upload_part(Bucket=s3.bucket, Key=running, UploadId=up, PartNumber=1,
                          Body=b"\x1f\x8b" + b"\0" * 100)

    r = cli(s3.env, "prune", s3.url("node/"), "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["deleted"] == [] and out["stale_uploads"] == []
    kept = {x["id"]: x for x in out["groups"]["ipfs"]}
    assert kept[names[0]]["rule"] == "maybe-parent"
    assert "ipfs_20260103_000001.tar.gz" in kept[names[0]]["reason"]
    assert s3.objects("node/") == [f"node/{n}" for n in names]

    time.sleep(1.5)  # idle for more than a second: stale at DSBACKUP_S3_STALE_HOURS=1 s
    env = dict(s3.env, DSBACKUP_S3_STALE_HOURS=str(1 / 3600))
    r = cli(env, "prune", s3.url("node/"), "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["aborted"] for x in out["stale_uploads"]] == [True]
    assert out["deleted"] == [s3.url(f"node/{names[0]}")]


def test_a_prefix_whose_uploads_cannot_be_listed_keeps_every_archive(s3, tmp_path):
    """Without s3:ListBucketMultipartUploads (here: the listing answered 403), the running
    uploads under the prefix cannot be seen, and any archive there may be the parent of one.
    Before, prune warned and went on: the parent of a backup being uploaded was deleted. Now
    every archive of the prefix is kept (rule maybe-parent, the reason naming the failure),
    one warning line, exit 1 (`live_writes_error` in --json)."""
    from s3server import FaultProxy, Rule

    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(500))
    d = tmp_path / "arch"
    d.mkdir()
    names = ["ipfs_20260101_000001.tar.gz", "ipfs_20260102_000001.tar.gz"]
    for n in names:
        r = cli(s3.env, "backup", f"lmdb:{src}", d / n)
        assert r.returncode == 0, r.stderr
        s3.client.upload_file(str(d / n), s3.bucket, f"node/{n}")
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("GET", "?uploads", times=100, status=403)]  # (the bucket's name
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)                 # has "uploads" in it)
    try:
        r = cli(env, "prune", s3.url("node/"), "--keep-last", "1", "--json")
    finally:
        proxy.stop()
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["deleted"] == [] and "HTTP 403" in out["live_writes_error"]
    kept = {x["id"]: x for x in out["groups"]["ipfs"]}
    assert kept[names[0]]["keep"] and kept[names[0]]["rule"] == "maybe-parent"
    assert "cannot be listed" in kept[names[0]]["reason"]
    assert "cannot see the backups being written there" in r.stderr
    assert s3.objects("node/") == [f"node/{n}" for n in names]
    # the user knows nothing is being uploaded there (a server or policy without the
    # permission): --assume-no-uploads prunes as usual
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("GET", "?uploads", times=100, status=403)]
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)
    try:
        r = cli(env, "prune", s3.url("node/"), "--keep-last", "1", "--dry-run",
                "--assume-no-uploads", "--json")
    finally:
        proxy.stop()
    out = json.loads(r.stdout)
    assert "live_writes_error" not in out and "pruned as if none were" in r.stderr
    assert {x["id"]: x["keep"] for x in out["groups"]["ipfs"]} == {names[0]: False,
                                                                    names[1]: True}
    # the listing answers again: the usual retention
    r = cli(s3.env, "prune", s3.url("node/"), "--keep-last", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["deleted"] == [s3.url(f"node/{names[0]}")]
