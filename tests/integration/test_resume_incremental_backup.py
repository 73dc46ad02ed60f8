"""SIGKILL a real `dsbackup backup --parent` once its temp file holds stored chunks, then
`backup --resume`: refused with another parent (exit 2, the file kept); with the same parent it
goes on, is itself killed and resumed again; the archive verifies deep with its chain, restores
exactly the store, and `inspect` shows both resumes (docs/FORMAT.md §11.5)."""

from __future__ import annotations

import json
import subprocess
import sys

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from tests.support.deadwriter import dead_writer_file, sigkill_when_temp_over, temp_paths


def contents(uri):
    with open_datastore(uri, readonly=True) as ds:
        return [kv for keys, values in ds.scan_batches() for kv in zip(keys, values)]


def test_sigkill_an_incremental_then_resume_twice(tmp_path, cli_env):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(150000))
    uri = f"lmdb:{src}"
    out = tmp_path / "out"
    out.mkdir()
    full, other = out / "full.tar.gz", out / "other.tar.gz"
    base = [sys.executable, "-m", "dsbackup", "backup", uri]
    for a in (full, other):
        r = subprocess.run([*base, str(a), "--chunk-size", "100"], env=cli_env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    keys = [k for k, _ in contents(uri)]
    with open_datastore(uri) as ds:  # every 300th record changed: stored and referenced chunks
        for i, k in enumerate(keys[::300]):
            ds.put(k, b"changed %d" % i)
    archive = out / "inc.tar.gz"
    cmd = [*base, str(archive), "--parent", str(full), "--workers", "1", "--level", "9"]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    size = archive.stat().st_size
    with ArchiveReader(archive) as a:
        want = {k: a.summary[k] for k in ("chunks", "records", "raw_bytes", "fingerprint",
                                          "referenced_chunks", "stored_chunks")}
    assert 0 < want["referenced_chunks"] < want["chunks"] - 100
    archive.unlink()

    tmp = sigkill_when_temp_over(cmd, cli_env, out, archive.name, size // 4)
    killed = tmp.read_bytes()

    # another parent, or none: refused, exit 2, the file kept as it was
    for args in (["--parent", str(other)], []):
        r = subprocess.run([*base, str(archive), *args, "--resume"], env=cli_env,
                           capture_output=True, text=True)
        assert r.returncode == 2 and "cannot resume" in r.stderr and "parent is" in r.stderr
        assert "Traceback" not in r.stderr
        assert temp_paths(out, archive.name) == [tmp] and tmp.read_bytes() == killed

    # the resume is itself killed further on, then resumed again
    tmp = sigkill_when_temp_over([*cmd, "--resume"], cli_env, out, archive.name, size // 2)
    assert tmp.stat().st_size > len(killed) // 2
    r = subprocess.run([*cmd, "--resume"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "of them references" in r.stderr
    assert temp_paths(out, archive.name) == []

    v = subprocess.run([sys.executable, "-m", "dsbackup", "verify", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    with ArchiveReader(archive) as a:
        assert {k: a.summary[k] for k in want} == want  # the same archive as without a kill
        epochs = a.summary["resumed"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert 0 < epochs[0]["from_seq"] <= epochs[1]["from_seq"] < want["chunks"]
    assert all(isinstance(e["snapshot"], int) for e in epochs)

    dst = tmp_path / "dst"
    r = subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(archive),
                        f"lmdb:{dst}"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert contents(f"lmdb:{dst}") == contents(uri)
    r = subprocess.run([sys.executable, "-m", "dsbackup", "inspect", "--json", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert json.loads(r.stdout)["resumed"] == epochs


def test_a_resume_that_fails_before_writing_keeps_the_file(tmp_path, cli_env):
    """A flatfs store with a stray file: the resumed run stops (exit 2) before writing
    anything; its temp file stays, and resumes once the store is fixed."""
    import random

    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    rng = random.Random(2)
    uri = f"flatfs:{tmp_path / 'src'}"

    def put_blocks(ds, n):
        recs = {}
        for _ in range(n):
            v = rng.randbytes(rng.randrange(100, 1500))
            recs[b"/" + datasets.block_key(v)[len(b"/blocks/"):]] = v
        ds.put_many(sorted(recs), [recs[k] for k in sorted(recs)])

    with open_datastore(uri) as ds:
        put_blocks(ds, 600)
    out = tmp_path / "out"
    out.mkdir()
    full, want = out / "full.tar.gz", tmp_path / "want.tar.gz"
    cfg = BackupConfig(chunk_size=8, chunk_max_bytes=4096, workers=2)
    BackupManager(cfg).create_backup(uri, full)
    with open_datastore(uri) as ds:
        put_blocks(ds, 20)
    BackupManager(cfg).create_backup(uri, want, parent=full)
    with ArchiveReader(want) as r:
        seq = [i for i in range(r.chunk_count) if not r.index.entry(i).in_parent][2]
        e = r.index.entry(seq)
    archive = out / "inc.tar.gz"
    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp = out / f".{archive.name}.tmp-{dead.pid}-0123456789ab"
    tmp.write_bytes(want.read_bytes()[:e.offset + e.length])
    shard = next(p for p in (tmp_path / "src").iterdir() if p.is_dir())
    (shard / "stray.txt").write_bytes(b"not a block")

    cmd = [sys.executable, "-m", "dsbackup", "backup", uri, str(archive), "--parent", str(full),
           "--resume"]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "stray.txt" in r.stderr and "Traceback" not in r.stderr
    [kept] = temp_paths(out, archive.name)
    assert kept.read_bytes() == want.read_bytes()[:e.offset + e.length]
    (shard / "stray.txt").unlink()
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and temp_paths(out, archive.name) == []
    with ArchiveReader(archive) as a, ArchiveReader(want) as w:
        assert a.summary["fingerprint"] == w.summary["fingerprint"]
        assert a.summary["raw_bytes"] == w.summary["raw_bytes"]
        assert a.summary["resumed"][0]["from_seq"] == seq + 1


def test_a_flatfs_incremental_resumed_after_its_last_stored_chunk_counts_its_references(
        tmp_path, cli_env):
    """A flatfs incremental killed after its last stored chunk: the resumed run finds no
    clean chunk after the cut, and the raw bytes of the references kept below it (carried by
    the clean chunks' share) were never counted: the summary's raw_bytes fell short, and
    verify and restore said exit 3 of an archive holding every record."""
    src = tmp_path / "src"
    uri = f"flatfs:{src}"
    with open_datastore(uri) as ds:
        blocks = [(k[len(b"/blocks"):], v) for k, v in datasets.iter_blocks(1500, block_size=600)]
        ds.put_many([k for k, _ in blocks], [v for _, v in blocks])
    out = tmp_path / "out"
    out.mkdir()
    parent, archive = out / "p.tar.gz", out / "i.tar.gz"
    base = [sys.executable, "-m", "dsbackup", "backup", uri]
    r = subprocess.run([*base, str(parent), "--chunk-size", "50"], env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open_datastore(uri) as ds:  # a new last key: the incremental's last chunk is stored
        ds.put(b"/ZZZZZZZZZZ", b"a block after every other")
    cmd = [*base, str(archive), "--chunk-size", "50", "--parent", str(parent)]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with ArchiveReader(archive) as a:
        last = a.index.entry(a.chunk_count - 1)
        assert not last.in_parent and a.summary["referenced_chunks"] > 0
        raw = a.summary["raw_bytes"]
    data = archive.read_bytes()
    archive.unlink()
    dead_writer_file(archive, data[:last.offset + last.length + 100])  # killed in the index

    r = subprocess.run([*cmd, "--resume"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    with ArchiveReader(archive) as a:
        assert a.summary["raw_bytes"] == raw
    v = subprocess.run([sys.executable, "-m", "dsbackup", "verify", str(archive)],
                       env=cli_env, capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    dst = tmp_path / "dst"
    r = subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(archive),
                        f"lmdb:{dst}"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert contents(f"lmdb:{dst}") == contents(uri)
