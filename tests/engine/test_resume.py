"""backup --resume (docs/FORMAT.md §11.5): a dead writer's temp file is rescanned, cut after its
last whole, checked chunk, and continued from the next key. The dead writer's file is made
from a prefix of a finished archive, named with the PID of a process that has exited."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import ArchiveError, ConfigError
from tests.support.deadwriter import dead_writer_file, temp_files

CHUNK = 200


def contents(ds) -> list[tuple[bytes, bytes]]:
    out = []
    for keys, values in ds.scan_batches():
        out += list(zip(keys, values))
    return out


@pytest.fixture
def store(tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(12000))
    return src


def full_archive(tmp_path, store, **cfg) -> Path:
    out = tmp_path / "full.tar.gz"
    BackupManager(BackupConfig(chunk_size=CHUNK, workers=2, **cfg)).create_backup(
        f"lmdb:{store}", out)
    return out


def killed_at(full: Path, final: Path, chunk: int, *, part: str = "chunk",
              extra: int = 0, data: bytes | None = None) -> Path:
    """A dead writer's temp file for `final`: `full` up to the end of chunk `chunk`'s member
    (part="chunk") or its catalog's (part="catalog"), plus `extra` bytes of what followed."""
    if data is None:
        with ArchiveReader(full) as r:
            e = r.index.entry(chunk) if part == "chunk" else r.index.catalog(chunk)
        data = full.read_bytes()[:e.offset + e.length + extra]
    return dead_writer_file(final, data)


def resume(tmp_path, store, final, **cfg):
    mgr = BackupManager(BackupConfig(chunk_size=CHUNK, workers=2, resume=True, **cfg))
    return mgr.create_backup(f"lmdb:{store}", final)


def restored(tmp_path, archive) -> list[tuple[bytes, bytes]]:
    dst = tmp_path / f"dst-{archive.name}"
    BackupManager().restore_backup(archive, f"lmdb:{dst}")
    with open_datastore(f"lmdb:{dst}", readonly=True) as ds:
        return contents(ds)


def test_resume_a_torn_member_is_cut_and_the_rest_scanned(tmp_path, store, caplog):
    full = full_archive(tmp_path, store)
    final = tmp_path / "a.tar.gz"
    killed_at(full, final, 20, extra=777)  # chunk 21's member torn after 777 bytes
    caplog.set_level(logging.WARNING, "dsbackup")
    meta = resume(tmp_path, store, final)
    assert "resuming" in caplog.text and "777 bytes after them dropped" in caplog.text
    assert verify_archive(final, deep=True).ok
    with open_datastore(f"lmdb:{store}", readonly=True) as ds:
        expected = contents(ds)
        txn = ds.last_txn_id()
    assert meta.total_keys == len(expected)
    assert restored(tmp_path, final) == expected
    with ArchiveReader(final) as r:
        assert r.summary["resumed"] == [{"epoch": 1, "from_seq": 21, "snapshot": txn}]
        assert r.summary["snapshot"] == txn
        with ArchiveReader(full) as f:  # the kept members are the dead writer's bytes
            assert r.manifest == f.manifest
            assert [r.index.entry(i) for i in range(21)] == [f.index.entry(i)
                                                              for i in range(21)]
    assert temp_files(tmp_path, final.name) == []


def test_resume_at_a_member_boundary_drops_nothing(tmp_path, store, caplog):
    full = full_archive(tmp_path, store)
    final = tmp_path / "a.tar.gz"
    killed_at(full, final, 9)
    caplog.set_level(logging.WARNING, "dsbackup")
    resume(tmp_path, store, final)
    assert "10 chunks" in caplog.text and " 0 bytes after them dropped" in caplog.text
    assert verify_archive(final, deep=True).ok
    with ArchiveReader(final) as r, ArchiveReader(full) as f:
        # content-defined boundaries: the resumed archive holds the same chunks
        assert r.summary["fingerprint"] == f.summary["fingerprint"]
        assert r.summary["resumed"][0]["from_seq"] == 10


def test_resume_after_the_last_chunk_writes_only_the_end(tmp_path, store):
    full = full_archive(tmp_path, store)
    with ArchiveReader(full) as f:
        last = f.chunk_count - 1
        fingerprint = f.summary["fingerprint"]
    final = tmp_path / "a.tar.gz"
    killed_at(full, final, last, extra=300)  # killed while writing the index
    resume(tmp_path, store, final)
    assert verify_archive(final, deep=True).ok
    with ArchiveReader(final) as r:
        assert r.summary["resumed"][0]["from_seq"] == last + 1 == r.chunk_count
        assert r.summary["fingerprint"] == fingerprint and r.summary["records"] == 12000


def test_resume_with_catalogs_cuts_a_chunk_whose_catalog_is_torn(tmp_path, store):
    full = full_archive(tmp_path, store, include_metadata=True)
    final = tmp_path / "a.tar.gz"
    # chunk 5 whole, its catalog torn: chunk 5 goes too (a chunk is kept with its catalog)
    killed_at(full, final, 4, part="catalog", extra=0)
    with ArchiveReader(full) as r:
        e5, c5 = r.index.entry(5), r.index.catalog(5)
    tmp = next(tmp_path.glob(f".{final.name}.tmp-*"))
    blob = full.read_bytes()
    tmp.write_bytes(blob[:c5.offset + c5.length // 2])
    assert e5.offset + e5.length == c5.offset
    meta = resume(tmp_path, store, final, include_metadata=True)
    assert verify_archive(final, deep=True).ok
    with ArchiveReader(final) as r:
        assert r.summary["resumed"][0]["from_seq"] == 5
        assert r.index.catalog_count == r.chunk_count
    assert meta.total_keys == 12000
    with open_datastore(f"lmdb:{store}", readonly=True) as ds:
        assert restored(tmp_path, final) == contents(ds)


def test_resume_when_only_the_manifest_survived(tmp_path, store, caplog):
    full = full_archive(tmp_path, store)
    final = tmp_path / "a.tar.gz"
    killed_at(full, final, 0, extra=-1)  # chunk 0 one byte short
    caplog.set_level(logging.WARNING, "dsbackup")
    resume(tmp_path, store, final)
    # (it said "scanning on from the key after None")
    assert "scanning on from the first key" in caplog.text and "None" not in caplog.text
    assert verify_archive(final, deep=True).ok
    with ArchiveReader(final) as r:
        assert r.summary["resumed"][0]["from_seq"] == 0
        assert r.summary["records"] == 12000


def test_records_written_after_the_kill_are_in_the_rest(tmp_path, store):
    """The resumed part is a new snapshot: a key after the cut written since the kill is
    in the archive; one before the cut is not (docs/FORMAT.md §11.5)."""
    full = full_archive(tmp_path, store)
    final = tmp_path / "a.tar.gz"
    killed_at(full, final, 20, extra=100)
    with ArchiveReader(full) as r:
        cut = r.index.entry(20).last_key
    early, late = b"/records/0", cut + b"~after"
    assert early < cut < late
    with open_datastore(f"lmdb:{store}") as ds:
        ds.put_many([early, late], [b"early", b"late"])
        txn = ds.last_txn_id()
    resume(tmp_path, store, final)
    keys = dict(restored(tmp_path, final))
    assert keys[late] == b"late" and early not in keys
    with ArchiveReader(final) as r:
        assert r.summary["resumed"][0]["snapshot"] == txn


def test_mismatched_settings_are_refused_and_the_file_kept(tmp_path, store):
    full = full_archive(tmp_path, store)
    final = tmp_path / "a.tar.gz"
    tmp = killed_at(full, final, 20, extra=100)
    before = tmp.read_bytes()
    with pytest.raises(ArchiveError, match="cannot resume .*compression_level is 1 there, "
                                           "9 now"):
        resume(tmp_path, store, final, compression_level=9)
    with pytest.raises(ArchiveError, match="cannot resume .*exclude_patterns"):
        resume(tmp_path, store, final, exclude_patterns=["/x/**"])
    other = tmp_path / "other"
    datasets.write_lmdb(str(other), datasets.iter_small(10))
    with pytest.raises(ArchiveError, match="cannot resume .*source uri"):
        BackupManager(BackupConfig(chunk_size=CHUNK, resume=True)).create_backup(
            f"lmdb:{other}", final)
    assert not final.exists()
    assert temp_files(tmp_path, final.name) == [tmp.name] and tmp.read_bytes() == before
    resume(tmp_path, store, final)  # the right settings still resume it
    assert verify_archive(final, deep=True).ok


def test_no_temp_file_is_a_normal_backup(tmp_path, store, caplog):
    final = tmp_path / "a.tar.gz"
    caplog.set_level(logging.WARNING, "dsbackup")
    meta = resume(tmp_path, store, final)
    assert "no temporary file of an interrupted backup" in caplog.text
    assert meta.total_keys == 12000
    with ArchiveReader(final) as r:
        assert "resumed" not in r.summary


def test_a_temp_file_without_a_manifest_is_refused(tmp_path, store):
    final = tmp_path / "a.tar.gz"
    killed_at(tmp_path, final, 0, data=b"\x1f\x8b" + b"x" * 300)
    with pytest.raises(ArchiveError, match="cannot resume: .* has no whole manifest"):
        resume(tmp_path, store, final)


def test_an_empty_temp_file_is_refused_saying_what_to_do(tmp_path, store):
    final = tmp_path / "a.tar.gz"
    killed_at(tmp_path, final, 0, data=b"")
    with pytest.raises(ArchiveError, match="cannot resume: .* is empty; leave out --resume "
                                           "to start again"):
        resume(tmp_path, store, final)


def test_the_go_format_is_refused(tmp_path, store):
    mgr = BackupManager(BackupConfig(resume=True))
    with pytest.raises(ConfigError, match="--resume continues only dsbackup-format backups "
                                          "into a local file, not --format go"):
        mgr.create_backup(f"lmdb:{store}", tmp_path / "a.tar.gz", format="go")


def test_a_second_resume_keeps_the_first_epoch(tmp_path, store):
    full = full_archive(tmp_path, store)
    final = tmp_path / "a.tar.gz"
    tmp = killed_at(full, final, 30, extra=10)
    first = {"epoch": 1, "from_seq": 12, "snapshot": 3}
    try:
        os.setxattr(tmp, "user.dsbackup.resumed", json.dumps([first]).encode())
    except OSError:
        pytest.skip("no user extended attributes on this filesystem")
    resume(tmp_path, store, final)
    with ArchiveReader(final) as r:
        assert [e["epoch"] for e in r.summary["resumed"]] == [1, 2]
        assert r.summary["resumed"][0] == first
        assert r.summary["resumed"][1]["from_seq"] == 31


def test_resume_a_kubo_node_keeps_its_node_member(tmp_path, kubo_node_repo):
    from tests.support.kubonode import kubo_records

    src = f"kubo:{kubo_node_repo}"
    full = tmp_path / "full.tar.gz"
    cfg = dict(chunk_size=1, workers=2)
    BackupManager(BackupConfig(**cfg)).create_backup(src, full)
    with ArchiveReader(full) as f:
        assert f.version == 2 and f.chunk_count >= 3
        node = (f.index.node_offset, f.index.node_length)
        assert node[0] > 0
    final = tmp_path / "a.tar.gz"
    killed_at(full, final, 0, extra=50)
    meta = BackupManager(BackupConfig(resume=True, **cfg)).create_backup(src, final)
    assert meta.node is not None
    assert verify_archive(final, deep=True).ok
    with ArchiveReader(final) as r, ArchiveReader(full) as f:
        assert r.version == 2 and r.summary["resumed"][0]["from_seq"] == 1
        assert r.summary["resumed"][0]["snapshot"] is None  # not LMDB: no snapshot
        assert [x.path for x in r.node_files()] == [x.path for x in f.node_files()]
        assert (r.index.node_offset, r.index.node_length) == node
    new = tmp_path / "restored"
    BackupManager().restore_backup(final, f"kubo:{new}")
    assert kubo_records(new) == kubo_records(kubo_node_repo)


def test_resume_while_another_process_writes_the_archive_is_exit_4_in_one_line(tmp_path,
                                                                               run_cli, cli_env):
    # it said "no temporary file of an interrupted backup to resume; starting a new backup"
    # and then "another dsbackup process ... is writing this archive" (exit 4): two lines
    # that contradict each other; the live writer's file is not an interrupted backup
    import subprocess
    import sys

    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k%03d" % i, b"v") for i in range(20)]))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path\n"
         "from dsbackup.storage.local import LocalSink\n"
         f"s = LocalSink(Path({str(tmp_path / 'a.tar.gz')!r})); print('held', flush=True)\n"
         "sys.stdin.read()\n"], env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ([], ["--parent", str(tmp_path / "p.tar.gz")]):
            if extra:
                assert run_cli("backup", f"lmdb:{tmp_path / 's'}", tmp_path / "p.tar.gz"
                               ).returncode == 0
            r = run_cli("backup", f"lmdb:{tmp_path / 's'}", tmp_path / "a.tar.gz", "--resume",
                        *extra)
            assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and f"(PID {holder.pid})" in lines[0], r.stderr
            assert "it is not an interrupted backup to resume" in lines[0]
        assert len(temp_files(tmp_path, "a.tar.gz")) == 1  # the writer's file, untouched
    finally:
        holder.stdin.close()
        holder.wait()
