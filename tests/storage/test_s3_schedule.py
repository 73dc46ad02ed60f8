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


class _DamagingRunner:
    """The real runner; the object it has just uploaded gets one byte of its middle chunk
    flipped (rewritten in the bucket) before the run's quick verify reads it."""

    def __new__(cls, client, bucket):
        from dsbackup.archive.reader import ArchiveReader
        from dsbackup.scheduler.runner import ManagerRunner

        class Runner(ManagerRunner):
            def run(self, schedule, archive_path, cancel_event, parent=None, **kw):
                res = super().run(schedule, archive_path, cancel_event, parent, **kw)
                with ArchiveReader(res.path) as r:
                    e = r.entry(r.chunk_count // 2)
                key = res.path.key
                data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                data[e.offset + e.length // 2] ^= 0xFF
                client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
                return res

        return Runner()


def test_a_new_archive_failing_its_verify_leaves_its_name_on_s3(s3, tmp_path):
    """As a local file is renamed to ….unverified, the object is copied there and deleted:
    before, it stayed at its archive name, and `prune --keep-last 1` without --state kept the
    damaged archive (the newest) and deleted the good one."""
    import threading
    from datetime import datetime, timezone

    from dsbackup.scheduler.clock import ManualClock
    from dsbackup.scheduler.config import ScheduledBackup
    from dsbackup.scheduler.job import run_job
    from dsbackup.scheduler.retention import RetentionPolicy
    from dsbackup.scheduler.runner import ManagerRunner
    from dsbackup.storage import as_location

    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(1500))
    sched = ScheduledBackup(id="ipfs", name="ipfs-node", schedule="@daily", source=f"lmdb:{src}")
    prefix = as_location(s3.url("nodes/a/"))
    common = dict(backup_dir=prefix, policy=RetentionPolicy(keep_last=5), tz=timezone.utc,
                  verify=True, trigger="test", cancel=threading.Event())
    good = run_job(sched, [], runner=ManagerRunner(),
                   clock=ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc)), **common)
    assert good.record.ok, good.record.error
    bad = run_job(sched, good.archives, runner=_DamagingRunner(s3.client, s3.bucket),
                  clock=ManualClock(datetime(2026, 1, 2, tzinfo=timezone.utc)), **common)
    assert not bad.record.ok and bad.record.exit_code == 3
    assert "failed verification" in bad.record.error
    key = bad.record.archive.split(f"{s3.bucket}/", 1)[1]
    assert s3.objects("nodes/a/") == sorted([good.record.archive.split(f"{s3.bucket}/", 1)[1],
                                             key + ".unverified"])
    assert f"kept as {bad.record.archive}.unverified" in bad.record.error

    r = subprocess.run([sys.executable, "-m", "dsbackup", "prune", s3.url("nodes/a/"),
                        "--keep-last", "1", "--json"], env=s3.env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == []
    assert good.record.archive.split(f"{s3.bucket}/", 1)[1] in s3.objects("nodes/a/")


def test_an_object_that_cannot_be_copied_aside_stays_at_its_name(s3, tmp_path, monkeypatch):
    """The copy to ….unverified fails (an object over 5 GiB, a server without CopyObject):
    the object is left where it is, as a file whose rename fails is, and the run's error says
    so; it was deleted before (one bad chunk or a missing parent lost the whole archive)."""
    import threading
    from datetime import datetime, timezone

    from dsbackup.scheduler.clock import ManualClock
    from dsbackup.scheduler.config import ScheduledBackup
    from dsbackup.scheduler.job import run_job
    from dsbackup.scheduler.retention import RetentionPolicy
    from dsbackup.storage import as_location
    from dsbackup.storage import s3 as s3mod

    def no_copy(*_a, **_k):
        raise RuntimeError("CopyObject not implemented")

    monkeypatch.setattr(s3mod.obstore, "copy", no_copy)
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(1500))
    sched = ScheduledBackup(id="ipfs", name="ipfs-node", schedule="@daily", source=f"lmdb:{src}")
    bad = run_job(sched, [], runner=_DamagingRunner(s3.client, s3.bucket),
                  clock=ManualClock(datetime(2026, 1, 2, tzinfo=timezone.utc)),
                  backup_dir=as_location(s3.url("nodes/b/")),
                  policy=RetentionPolicy(keep_last=5), tz=timezone.utc, verify=True,
                  trigger="test", cancel=threading.Event())
    assert not bad.record.ok and bad.record.exit_code == 3
    key = bad.record.archive.split(f"{s3.bucket}/", 1)[1]
    assert s3.objects("nodes/b/") == [key]
    assert "could not be copied" in bad.record.error and "still at its name" in \
        bad.record.error
