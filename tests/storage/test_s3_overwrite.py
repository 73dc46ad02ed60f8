"""`backup --overwrite` to an s3:// key (docs/STORAGE.md): the object is replaced only by a
completed upload, never while another archive under its prefix (or in --parent-dir) uses it
as its parent; an interrupted overwrite leaves the old object as it was. The real CLI in a
subprocess against moto's server on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from s3server import FaultProxy, Rule

from dsbackup import datasets


def cli(env, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_overwrite_replaces_an_object_nothing_depends_on(s3, tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(400))
    s3.client.put_object(Bucket=s3.bucket, Key="o/a.dsb", Body=b"not ours")
    r = cli(s3.env, "backup", f"lmdb:{src}", s3.url("o/a.dsb"), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert s3.get("o/a.dsb")[:8] != b"not ours" and s3.uploads() == []
    assert cli(s3.env, "verify", s3.url("o/a.dsb")).returncode == 0
    # twice: an archive replaces an archive
    first = s3.get("o/a.dsb")
    datasets.write_lmdb(str(src), datasets.iter_small(50, seed=3))
    r = cli(s3.env, "backup", f"lmdb:{src}", s3.url("o/a.dsb"), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert s3.get("o/a.dsb") != first
    assert cli(s3.env, "verify", s3.url("o/a.dsb")).returncode == 0


def test_overwrite_refuses_a_parent_of_another_archive(s3, tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(400))
    env = s3.env
    assert cli(env, "backup", f"lmdb:{src}", s3.url("c/full.dsb")).returncode == 0
    # the child lives under another prefix: found through --parent-dir
    r = cli(env, "backup", f"lmdb:{src}", s3.url("d/inc.dsb"), "--parent", s3.url("c/full.dsb"))
    assert r.returncode == 0, r.stderr
    before = s3.get("c/full.dsb")
    r = cli(env, "backup", f"lmdb:{src}", s3.url("c/full.dsb"), "--overwrite",
            "--parent-dir", s3.url("d/"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not replaced, although --overwrite was given" in r.stderr
    assert s3.url("d/inc.dsb") in r.stderr
    assert s3.get("c/full.dsb") == before and s3.uploads() == []
    # beside it under the same prefix: found without --parent-dir
    r = cli(env, "backup", f"lmdb:{src}", s3.url("c/inc.dsb"), "--parent", s3.url("c/full.dsb"))
    assert r.returncode == 0, r.stderr
    r = cli(env, "backup", f"lmdb:{src}", s3.url("c/full.dsb"), "--overwrite")
    assert r.returncode == 2 and s3.url("c/inc.dsb") in r.stderr
    assert s3.get("c/full.dsb") == before
    # an archive is never written over its own parent, --overwrite or not
    r = cli(env, "backup", f"lmdb:{src}", s3.url("c/full.dsb"), "--overwrite", "--parent",
            s3.url("c/full.dsb"))
    assert r.returncode == 2 and "an archive this one is made from" in r.stderr


def test_an_interrupted_overwrite_leaves_the_old_object(s3, tmp_path):
    src = tmp_path / "big"
    datasets.write_lmdb(str(src), datasets.iter_blocks(160))  # ~40 MB: 8 parts of 5 MiB
    s3.client.put_object(Bucket=s3.bucket, Key="i/x.dsb", Body=b"the old archive")
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    proxy.rules = [Rule("PUT", "partNumber=2", times=1, status=None, delay=3.0)]
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_PART_MB="5",
               DSBACKUP_S3_CONCURRENCY="1")
    try:
        p = subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                              s3.url("i/x.dsb"), "--level", "0", "--workers", "1",
                              "--overwrite"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any("partNumber=2" in s for s in proxy.seen):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130, err
    finally:
        proxy.stop()
    assert s3.get("i/x.dsb") == b"the old archive" and s3.uploads() == []
