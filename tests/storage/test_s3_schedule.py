"""The scheduler targets a bucket (``backup_dir = "s3://BUCKET/PREFIX/"``, ``s3_endpoint``): archives
are uploaded there, incrementals find their parent under the prefix, retention deletes objects;
the state stays local."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from s3server import SECRET_KEY

from dsbackup import datasets

CONFIG = """
[scheduler]
backup_dir = "s3://{bucket}/nodes/a/"
s3_endpoint = "{endpoint}"
state_dir = "{state}"

[retention]
keep_last = 2

[[schedule]]
id = "ipfs"
name = "ipfs-node"
cron = "@daily"
source = "lmdb:{src}"
incremental = true
full_every = 2
"""


def test_scheduled_backups_to_a_bucket_with_incrementals_and_retention(s3, tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(1500))
    cfg = tmp_path / "dsbackup.toml"
    cfg.write_text(CONFIG.format(bucket=s3.bucket, endpoint=s3.endpoint, state=tmp_path / "state",
                                 src=src))
    env = dict(s3.env)
    env.pop("AWS_ENDPOINT_URL")  # from the config file
    outs = []
    for i in range(4):
        datasets.write_lmdb(str(src), datasets.iter_small(50, seed=20 + i))
        r = subprocess.run([sys.executable, "-m", "dsbackup", "schedule", "run-once", "ipfs",
                            "--config", cfg, "--json"], env=env, capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, r.stderr
        assert SECRET_KEY not in r.stdout + r.stderr
        outs.append(json.loads(r.stdout))
        time.sleep(1.1)  # distinct archive names (one per second)
    assert all(o["ok"] and o["verified"] for o in outs)
    assert all(o["archive"].startswith(f"s3://{s3.bucket}/nodes/a/ipfs-node_") for o in outs)
    assert [o["parent"] is not None for o in outs] == [False, True, False, True]
    # keep_last 2: the second chain stays, the first is deleted from the bucket
    names = [o["archive"].rsplit("/", 1)[1] for o in outs]
    assert s3.objects("nodes/a/") == sorted(f"nodes/a/{n}" for n in names[2:])
    assert outs[3]["pruned"] == sorted(names[:2])
    assert (tmp_path / "state").is_dir() and s3.objects("state") == []


def test_scheduler_s3_stale_hours_aborts_killed_runs_uploads(s3, tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(300))
    key = "nodes/a/ipfs-node_20260101_000000.tar.gz"  # a killed run's upload
    uid = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    s3.client.upload_part(Bucket=s3.bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"x")
    time.sleep(2.5)
    cfg = tmp_path / "dsbackup.toml"
    text = CONFIG.format(bucket=s3.bucket, endpoint=s3.endpoint, state=tmp_path / "state",
                         src=src)
    env = dict(s3.env, DSBACKUP_S3_STALE_HOURS="off")  # the config file's value wins
    for bad in ("0", '"soon"', "true"):
        cfg.write_text(text.replace("[retention]", f"s3_stale_hours = {bad}\n\n[retention]"))
        r = subprocess.run([sys.executable, "-m", "dsbackup", "schedule", "run-once", "ipfs",
                            "--config", cfg], env=env, capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 2 and "s3_stale_hours" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    cfg.write_text(text.replace("[retention]", f"s3_stale_hours = {1 / 3600}\n\n[retention]"))
    r = subprocess.run([sys.executable, "-m", "dsbackup", "schedule", "run-once", "ipfs",
                        "--config", cfg, "--json"], env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr
    assert f"s3://{s3.bucket}/{key}: aborted an unfinished multipart upload" in r.stderr
    assert s3.uploads() == []
