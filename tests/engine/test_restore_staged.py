"""Restore into flatfs (and a Kubo repo's /blocks) through staged writes (restore_staged.py):
files written in the inflate threads, committed in order, journaled only once on disk."""

from __future__ import annotations

import os
import random
import string
import threading
from pathlib import Path

import pytest

from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.demo import store_digest
from dsbackup.engine import restore_staged
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import Cancelled, IntegrityError

B32 = string.ascii_uppercase + "234567"


def _records(n: int, seed: int = 3) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    recs = {("/CIQ" + "".join(rnd.choice(B32) for _ in range(40))).encode():
            rnd.randbytes(rnd.choice([0, 100, 3000, 40000])) for _ in range(n)}
    return sorted(recs.items())


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("staged")
    recs = _records(600)
    src = FlatfsDatastore(d / "src")
    src.put_many([k for k, _ in recs], [v for _, v in recs])
    src.close()
    path = d / "a.tar.gz"
    BackupManager(BackupConfig(chunk_size=20, workers=2)).create_backup(f"flatfs:{d / 'src'}",
                                                                       path)
    return path, d / "src", recs


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mode & 0o7777,
                                             None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.name != "diskUsage.cache"}


def test_records_are_written_in_the_inflate_threads_and_the_store_is_exact(
        tmp_path, archive, monkeypatch):
    """Every stage_many runs in a pool thread, never the main one (the old path wrote every
    file from the main thread); the result is the source store file for file, mode for mode,
    with no temp file left and the journal gone."""
    path, src, recs = archive
    threads: set[str] = set()
    real = FlatfsDatastore.stage_many

    def stage_many(self, keys, values):
        threads.add(threading.current_thread().name)
        return real(self, keys, values)

    monkeypatch.setattr(FlatfsDatastore, "stage_many", stage_many)
    dst = tmp_path / "dst"
    r = restore_archive(path, f"flatfs:{dst}", workers=2, batch_bytes=64 << 10)
    assert (r.records_written, r.chunks) == (len(recs), r.chunks_total)
    assert threads and all(t.startswith("dsbackup-inflate") for t in threads)
    assert _tree(dst) == _tree(src)
    assert os.listdir(dst / ".temp") == []
    assert store_digest(f"flatfs:{dst}") == store_digest(f"flatfs:{src}")
    assert not (tmp_path / "dst.dsbackup-restore.json").exists()
    with FlatfsDatastore(dst, readonly=True) as ds:
        assert ds.disk_usage() == FlatfsDatastore(src, readonly=True).disk_usage()
        assert ds.audit_files().count == 0


def test_the_journal_names_only_chunks_whose_files_are_in_place(tmp_path, archive,
                                                                monkeypatch):
    """At every journal update, each record of every chunk before `next_chunk` is in its
    file with its whole value (the commit has renamed it in before the journal moves)."""
    path, _, recs = archive
    with ArchiveReader(path) as reader:
        last_keys = [reader.entry(i).last_key for i in range(reader.chunk_count)]
    dst = tmp_path / "dst"
    seen: list[int] = []
    real = restore_staged.write_journal

    def write_journal(jpath, state):
        n = state["next_chunk"]
        if n:
            for k, v in recs:
                if k > last_keys[n - 1]:
                    break
                f = dst / k[-3:-1].decode() / (k[1:].decode() + ".data")
                assert f.read_bytes() == v, (n, k)
        seen.append(n)
        real(jpath, state)

    monkeypatch.setattr(restore_staged, "JOURNAL_INTERVAL_S", 0.0)
    monkeypatch.setattr(restore_staged, "write_journal", write_journal)
    restore_archive(path, f"flatfs:{dst}", workers=2, batch_bytes=64 << 10)
    assert len(seen) > 3 and seen == sorted(seen)


def test_a_damaged_chunk_stops_the_restore_and_leaves_no_temp_file(tmp_path, archive):
    """A chunk failing its checks halfway: IntegrityError naming it; what was staged and
    not committed is removed, every record file present holds its whole value, and a
    rerun of the same restore resumes from the journal (and fails at the same chunk)."""
    path, _, recs = archive
    values = dict(recs)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(path.read_bytes())
    with ArchiveReader(bad) as reader:
        e = reader.entry(reader.chunk_count // 2)
        seq = e.seq
    with open(bad, "r+b") as f:  # a byte inside the chunk's compressed member
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x55]))
    dst = tmp_path / "dst"
    with pytest.raises(IntegrityError, match=f"chunk {seq}"):
        restore_archive(bad, f"flatfs:{dst}", workers=2, batch_bytes=64 << 10)
    files = [p for p in dst.rglob("*") if p.is_file()]
    assert not [p for p in files if p.parent.name == ".temp" or "/.temp/" in str(p)]
    data = [p for p in files if p.name.endswith(".data")]
    assert 0 < len(data) < len(recs)
    for p in data:
        assert p.read_bytes() == values[b"/" + p.name[:-5].encode()]
    assert (tmp_path / "dst.dsbackup-restore.json").exists()


def test_a_cancelled_restore_removes_its_staged_files(tmp_path, archive):
    path, _, _ = archive
    cancel = threading.Event()
    calls = 0

    def progress(p):
        nonlocal calls
        calls += 1
        if calls == 5:
            cancel.set()

    dst = tmp_path / "dst"
    with pytest.raises(Cancelled):
        restore_archive(path, f"flatfs:{dst}", workers=2, batch_bytes=1 << 30,
                        progress=progress, cancel=cancel)
    # nothing was committed: the store it made is gone, the target as it was (missing)
    assert not dst.exists()


def test_restore_into_a_kubo_repo_stages_its_blocks(tmp_path, go_fixtures, archive,
                                                    monkeypatch):
    """A kubo: target's /blocks mount is written through the same staged path."""
    import shutil

    path, src, recs = archive
    kubo_src = tmp_path / "ksrc"
    shutil.copytree(go_fixtures / "kubo-v16-repo", kubo_src)
    for p in [kubo_src, *kubo_src.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    with open_datastore(f"kubo:{kubo_src}") as ds:
        ds.put_many([b"/blocks" + k for k, _ in recs[:200]], [v for _, v in recs[:200]])
    arc = tmp_path / "k.tar.gz"
    BackupManager(BackupConfig(chunk_size=20, workers=2)).create_backup(f"kubo:{kubo_src}",
                                                                       arc)
    staged = []
    real = FlatfsDatastore.stage_many

    def stage_many(self, keys, values):
        staged.append(len(keys))
        return real(self, keys, values)

    monkeypatch.setattr(FlatfsDatastore, "stage_many", stage_many)
    dst = tmp_path / "kdst"
    restore_archive(arc, f"kubo:{dst}", workers=2)
    assert sum(staged) == 201  # the fixture's one block and ours
    assert store_digest(f"kubo:{dst}") == store_digest(f"kubo:{kubo_src}")


@pytest.mark.parametrize("mode", ["overwrite", "skip_existing"])
def test_patterns_and_merging_modes(tmp_path, archive, mode):
    """A pattern cuts the staged restore as it cuts the datastore path's; into a
    store holding other values, overwrite (staged) replaces them, skip_existing (the
    datastore path, a stat per key) keeps them; progress counts every record once."""
    path, _, recs = archive
    values = dict(recs)
    dst = tmp_path / "dst"
    r = restore_archive(path, f"flatfs:{dst}", workers=2, pattern="/CIQA*")
    want = {k for k in values if k.startswith(b"/CIQA")}
    assert r.records_written == len(want) > 0
    with FlatfsDatastore(dst, readonly=True) as ds:
        assert {k for ks, _ in ds.scan_batches() for k in ks} == want
    old = sorted(values)[len(values) // 2]
    with FlatfsDatastore(dst) as ds:
        ds.put(old, b"kept or replaced")
    seen = []
    r = restore_archive(path, f"flatfs:{dst}", workers=2, mode=mode,
                        pattern="/CIQ[B-D]*", batch_bytes=64 << 10,
                        progress=lambda p: seen.append(p.records))
    more = {k for k in values if k[4:5] in b"BCD"}
    assert seen == sorted(seen) and seen[-1] == r.records_written + r.records_skipped
    with FlatfsDatastore(dst, readonly=True) as ds:
        got = dict(kv for ks, vs in ds.scan_batches() for kv in zip(ks, vs))
    assert set(got) == want | more | {old}
    assert got[old] == (b"kept or replaced" if mode == "skip_existing" or old not in more
                        else values[old])
