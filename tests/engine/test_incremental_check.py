"""The post-write check of an incremental (engine/incremental.py _check_own) still catches a
reference that does not match its parent, now that references are checked in bulk
(archive/refcheck.py)."""

from __future__ import annotations

import random

import pytest

from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import IntegrityError, MissingParentError


def _put(ds, rng: random.Random, n: int, tag: bytes) -> None:
    keys = sorted({b"/r/%08d" % rng.randrange(10**6) for _ in range(n)})
    ds.put_many(keys, [tag + rng.randbytes(rng.randrange(5, 60)) for _ in keys])


def test_a_reference_altered_in_the_writer_fails_the_backup_and_leaves_no_archive(
        tmp_path, monkeypatch):
    """_check_own (engine/incremental.py) catches a reference whose entry differs from the
    parent's (here: its payload digest, its parent seq, a parent seq past the end) with
    locate's own error; nothing is left at the final path."""
    from dsbackup.archive import writer as writer_mod

    rng = random.Random(5)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 2000, b"a")
    mgr = BackupManager(BackupConfig(chunk_size=4))
    parent = tmp_path / "p.tar.gz"
    mgr.create_backup(ds, parent)
    real = writer_mod.ArchiveWriter.add_reference
    for how, msg in (("digest", "holds other data"), ("seq", "holds other data"),
                     ("past", "which has only")):
        def bad(self, parent_seq, entry, raw_bytes, *, catalog=False, _how=how):
            if self.chunk_count == 300:
                if _how == "digest":
                    from dsbackup._plain import replace
                    entry = replace(entry, payload_xxh3=entry.payload_xxh3 ^ 1)
                else:
                    parent_seq = parent_seq + 1 if _how == "seq" else 10**9
            return real(self, parent_seq, entry, raw_bytes, catalog=catalog)

        monkeypatch.setattr(writer_mod.ArchiveWriter, "add_reference", bad)
        out = tmp_path / f"i-{how}.tar.gz"
        with pytest.raises(MissingParentError, match=f"chunk 300 .*{msg}"):
            mgr.create_backup(ds, out, parent=parent)
        assert not out.exists()
    monkeypatch.setattr(writer_mod.ArchiveWriter, "add_reference", real)
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=parent)  # sound again
    ds.close()


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x55]))


@pytest.mark.parametrize("what", ["chunk", "catalog"])
def test_a_damaged_parent_member_the_incremental_refers_to_fails_it(tmp_path, what):
    """A parent whose member (or catalog) bytes were damaged after it was written: its index
    still matches, so the chunk is referenced, but the new archive could not be restored.
    The incremental fails (IntegrityError, exit 3) naming the parent and its chunk, and
    leaves nothing at the final path; untouched, the same backup succeeds."""
    from dsbackup.archive.reader import ArchiveReader
    from dsbackup.errors import IntegrityError

    rng = random.Random(7)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 2000, b"a")
    mgr = BackupManager(BackupConfig(chunk_size=8, include_metadata=what == "catalog"))
    parent = tmp_path / "p.tar.gz"
    mgr.create_backup(ds, parent)
    good = parent.read_bytes()
    with ArchiveReader(parent) as r:
        n = r.chunk_count
        m = r.index.catalog(n // 2) if what == "catalog" else r.entry(n // 2)
        offset = m.offset + m.length // 2
    _flip(parent, offset)
    out = tmp_path / "i.tar.gz"
    with pytest.raises(IntegrityError, match=rf"refers to chunk {n // 2} of parent "
                                             rf".*p\.tar\.gz, which is damaged") as err:
        mgr.create_backup(ds, out, parent=parent)
    assert err.value.exit_code == 3
    assert not out.exists() and not list(tmp_path.glob(".*i.tar.gz*"))
    parent.write_bytes(good)
    mgr.create_backup(ds, out, parent=parent)
    assert out.exists()
    ds.close()


def test_a_damaged_grandparent_member_fails_the_second_incremental(tmp_path):
    """The reference resolves two levels down (incremental of an incremental): the member
    checked is the grandparent's."""
    from dsbackup.archive.reader import ArchiveReader
    from dsbackup.errors import IntegrityError

    rng = random.Random(8)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 2000, b"a")
    mgr = BackupManager(BackupConfig(chunk_size=8))
    full, inc1 = tmp_path / "full.tar.gz", tmp_path / "inc1.tar.gz"
    mgr.create_backup(ds, full)
    ds.put(b"/r/99999999", b"new")
    mgr.create_backup(ds, inc1, parent=full)
    with ArchiveReader(full) as r:
        m = r.entry(3)
        _flip(full, m.offset + m.length // 2)
    with pytest.raises(IntegrityError, match=r"refers to chunk 3 of parent .*full\.tar\.gz"):
        mgr.create_backup(ds, tmp_path / "inc2.tar.gz", parent=inc1)
    assert not (tmp_path / "inc2.tar.gz").exists()
    ds.close()


def test_trust_parent_skips_the_read_of_parent_members_only(tmp_path):
    """trust_parent: a damaged parent member is not read, so the backup succeeds; a reference
    whose index entry does not match its parent still fails it (the entries are checked)."""
    from dsbackup.archive import writer as writer_mod
    from dsbackup.archive.reader import ArchiveReader

    rng = random.Random(9)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 2000, b"a")
    mgr = BackupManager(BackupConfig(chunk_size=8, trust_parent=True))
    parent = tmp_path / "p.tar.gz"
    mgr.create_backup(ds, parent)
    with ArchiveReader(parent) as r:
        m = r.entry(r.chunk_count // 2)
    _flip(parent, m.offset + m.length // 2)
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=parent)
    real = writer_mod.ArchiveWriter.add_reference

    def bad(self, parent_seq, entry, raw_bytes, *, catalog=False):
        return real(self, parent_seq + 1 if self.chunk_count == 30 else parent_seq, entry,
                    raw_bytes, catalog=catalog)

    writer_mod.ArchiveWriter.add_reference = bad
    try:
        with pytest.raises(MissingParentError, match="chunk 30 .*holds other data"):
            mgr.create_backup(ds, tmp_path / "j.tar.gz", parent=parent)
    finally:
        writer_mod.ArchiveWriter.add_reference = real
    assert not (tmp_path / "j.tar.gz").exists()
    ds.close()


def _overlapping_parent(src, dst) -> int:
    """`src` (a format-1 archive, one index) rewritten so that every chunk's index entry names
    the same member range — all the chunk members together, with that range's XXH3, so each
    one "checks" — every other field and member as it was: a hostile parent whose check
    would hash the whole archive once per referenced chunk. Returns the chunk count."""
    from crafted import honest_member

    from dsbackup._ext.checksum import xxh3_64
    from dsbackup.archive import format as fmt
    from dsbackup.archive.index import ChunkEntry, IndexBuilder
    from dsbackup.archive.reader import ArchiveReader

    data = src.read_bytes()
    with ArchiveReader(src) as r:
        mend, t = r.manifest_end, r.trailer
        assert r.index.catalog_count == 0 and not r.index.node_length
        entries = list(r.index.entries())
    span = (mend, t.index_offset - mend)
    ib = IndexBuilder()
    for e in entries:
        ib.add_chunk(ChunkEntry(e.seq, *span, e.payload_len, e.records, e.payload_xxh3,
                                xxh3_64(data[mend:t.index_offset]), e.keys_xxh3,
                                e.first_key, e.last_key))
    im = honest_member(ib.encode(mend, xxh3_64(data[:mend])), fmt.TYPE_INDEX, fmt.INDEX_NAME)
    out = bytearray(data[:t.index_offset]) + im
    sm = data[t.summary_offset:t.summary_offset + t.summary_length]
    soff = len(out)
    out += sm
    out += fmt.Trailer(t.index_offset, len(im), xxh3_64(im), soff, len(sm), xxh3_64(sm),
                       t.chunk_count, len(out)).encode()
    dst.write_bytes(bytes(out))
    return len(entries)


def test_a_parent_whose_entries_overlap_is_refused_without_hashing_them_all(
        tmp_path, run_cli, monkeypatch):
    """A crafted parent whose index entries all name one range (the whole archive): the
    check before the rename hashed those bytes once per referenced chunk (a slow backup at
    the parent's will) and said OK. The format forbids it (docs/FORMAT.md §5): exit 3 before
    any member is hashed, nothing kept; verify says so too."""
    from dsbackup.archive import reader as reader_mod

    rng = random.Random(9)
    src = f"lmdb:{tmp_path / 's'}"
    with open_datastore(src) as ds:
        _put(ds, rng, 3000, b"a")
    honest = tmp_path / "honest.tar.gz"
    assert run_cli("backup", src, honest, "--chunk-size", "8").returncode == 0
    parent = tmp_path / "p.tar.gz"
    n = _overlapping_parent(honest, parent)
    assert n > 100
    out = tmp_path / "i.tar.gz"
    r = run_cli("backup", src, out, "--parent", parent)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "overlaps an earlier chunk's" in lines[0] and str(parent) in lines[0], lines
    assert not out.exists() and not list(tmp_path.glob(".i.tar.gz*"))
    r = run_cli("verify", "--quick", parent)
    assert r.returncode == 3 and "overlaps the previous member" in r.stderr, r.stderr

    # in-process: not one member hashed (the refusal comes before the first read)
    hashed: list[int] = []
    real = reader_mod.ArchiveReader._check_member_range

    def counting(self, i, *a, **kw):
        hashed.append(i)
        return real(self, i, *a, **kw)

    monkeypatch.setattr(reader_mod.ArchiveReader, "_check_member_range", counting)
    with open_datastore(src, readonly=True) as ds, \
            pytest.raises(IntegrityError, match="overlaps an earlier chunk's"):
        BackupManager(BackupConfig(workers=1)).create_backup(ds, out, parent=parent)
    assert hashed == [] and not out.exists()


@pytest.mark.parametrize("verify_integrity", [True, False])
def test_a_parent_deleted_while_the_backup_runs_fails_it_and_leaves_no_archive(
        tmp_path, verify_integrity):
    """A prune beside the backup, before its temp file exists (while the store is planned),
    may delete the parent: the backup reads on from its open file, so before, the archive was
    put in place without its parent (exit 0). Now the check before the rename sees the chain
    is gone: MissingParentError, nothing at the final path."""
    from dsbackup.engine.incremental import create_incremental

    rng = random.Random(7)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 2000, b"a")
    parent, child = tmp_path / "p.tar.gz", tmp_path / "c.tar.gz"
    BackupManager(BackupConfig(chunk_size=4)).create_backup(ds, parent)
    _put(ds, rng, 50, b"b")

    def prune_it(_progress) -> None:
        parent.unlink(missing_ok=True)

    cfg = BackupConfig(chunk_size=4, verify_integrity=verify_integrity)
    with pytest.raises(MissingParentError, match="was deleted while this backup ran"):
        create_incremental(ds, child, parent, cfg, progress=prune_it)
    assert not child.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.tar.gz")] == []
    ds.close()


def test_a_symlinked_parent_whose_target_was_deleted_fails_the_backup(tmp_path):
    """The parent given as a symlink (--parent link.tar.gz) whose target a prune of the
    target's directory deletes while the backup runs: the link is left dangling, and the check
    before the rename used to look at the link only (lexists), so the archive was put in
    place without its parent. Now the link is followed: MissingParentError, no archive."""
    from dsbackup.engine.incremental import create_incremental

    rng = random.Random(8)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 2000, b"a")
    (tmp_path / "real").mkdir()
    target, link, child = (tmp_path / "real" / "p.tar.gz", tmp_path / "p.tar.gz",
                           tmp_path / "c.tar.gz")
    BackupManager(BackupConfig(chunk_size=4)).create_backup(ds, target)
    link.symlink_to(target)
    _put(ds, rng, 50, b"b")

    def prune_it(_progress) -> None:
        target.unlink(missing_ok=True)

    with pytest.raises(MissingParentError, match="was deleted while this backup ran"):
        create_incremental(ds, child, link, BackupConfig(chunk_size=4), progress=prune_it)
    assert not child.exists()
    ds.close()


def test_a_parent_replaced_at_its_name_while_the_backup_runs_fails_it(tmp_path):
    """The parent's name taken by another archive while the backup runs (another archive
    renamed there; `backup --overwrite` of it, which its guard now refuses while the backup
    holds the parent, exit 4, but which may have passed that guard before the hold): the file
    still exists, so the check before the rename, which looked at existence only, put in
    place an incremental whose references point at chunks the archive now at that name does
    not hold (exit 0; verify then says the parent was "altered or replaced"). Now the
    identity is checked: the inode and size of the file read, MissingParentError, nothing at
    the final path."""
    import os

    from dsbackup.engine.incremental import create_incremental
    from dsbackup.errors import LockedError

    rng = random.Random(9)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    other = open_datastore(f"lmdb:{tmp_path / 'o'}")
    _put(ds, rng, 2000, b"a")
    _put(other, rng, 300, b"z")
    parent, child, stranger = (tmp_path / "p.tar.gz", tmp_path / "c.tar.gz",
                               tmp_path / "q.tar.gz")
    BackupManager(BackupConfig(chunk_size=4)).create_backup(ds, parent)
    _put(ds, rng, 50, b"b")

    def replace_it(_progress) -> None:
        if not stranger.exists():
            with pytest.raises(LockedError, match="is writing .*c.tar.gz with it as its parent"):
                BackupManager(BackupConfig(chunk_size=4, overwrite=True)).create_backup(
                    other, parent)
            BackupManager(BackupConfig(chunk_size=4)).create_backup(other, stranger)
            os.link(stranger, tmp_path / "q2.tar.gz")
            os.rename(tmp_path / "q2.tar.gz", parent)

    with pytest.raises(MissingParentError, match="was replaced by another archive"):
        create_incremental(ds, child, parent, BackupConfig(chunk_size=4), progress=replace_it)
    assert stranger.exists() and not child.exists()
    ds.close()
    other.close()


def test_an_s3_parent_replaced_at_its_key_while_the_backup_runs_fails_it(tmp_path, s3):
    """The same on S3: the parent object replaced at its key (another archive PUT there) while
    the backup runs: one HEAD per archive of the chain compares ETag and size with the object
    read; before, a HEAD saw only that an object was there. (--trust-parent: the parent's
    members are not read again, a read which would see the new ETag too.)"""
    from dsbackup.engine.incremental import create_incremental

    rng = random.Random(10)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    other = open_datastore(f"lmdb:{tmp_path / 'o'}")
    _put(ds, rng, 2000, b"a")
    _put(other, rng, 300, b"z")
    local, stranger = tmp_path / "p.tar.gz", tmp_path / "q.tar.gz"
    BackupManager(BackupConfig(chunk_size=4)).create_backup(ds, local)
    BackupManager(BackupConfig(chunk_size=4)).create_backup(other, stranger)
    s3.client.upload_file(str(local), s3.bucket, "n/p.tar.gz")
    _put(ds, rng, 50, b"b")
    done = []

    def replace_it(_progress) -> None:
        if not done:
            s3.client.upload_file(str(stranger), s3.bucket, "n/p.tar.gz")
            done.append(1)

    child = tmp_path / "c.tar.gz"
    with pytest.raises(MissingParentError, match="was replaced by another archive"):
        create_incremental(ds, child, s3.url("n/p.tar.gz"),
                           BackupConfig(chunk_size=4, trust_parent=True), progress=replace_it)
    assert done and not child.exists()
    ds.close()
    other.close()


def _resummarize(path, change) -> None:
    """Rewrite an archive's summary (its member, and the trailer that locates it) with every
    checksum right: only the summary's content is hostile."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from crafted import honest_member

    from dsbackup._ext.checksum import xxh3_64
    from dsbackup.archive import format as fmt
    from dsbackup.archive.reader import ArchiveReader

    data = path.read_bytes()
    with ArchiveReader(path) as r:
        summary = dict(r.summary)
        t = r.trailer
    change(summary)
    sm = honest_member(json.dumps(summary).encode(), fmt.TYPE_SUMMARY, fmt.SUMMARY_NAME)
    head = data[:t.summary_offset] + sm
    path.write_bytes(head + fmt.Trailer(t.index_offset, t.index_length, t.index_xxh3,
                                        t.summary_offset, len(sm), xxh3_64(sm), t.chunk_count,
                                        len(head)).encode())


@pytest.mark.parametrize("fingerprint", [None, 5, "zz" * 16, "0" * 31],
                         ids=["missing", "number", "not-hex", "short"])
def test_a_parent_summary_without_a_fingerprint_is_damage(tmp_path, fingerprint):
    """A parent whose summary has no fingerprint, or one that is not 32 hex digits (a
    hostile archive; benchmarks/fuzz_archives.py): the backup fails with exit 3 naming the
    parent's summary, nothing written (it was 'internal error: KeyError', or a child naming
    a fingerprint no reader can use)."""
    from dsbackup.archive.lineage import archive_fingerprint

    rng = random.Random(3)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 300, b"a")
    mgr = BackupManager(BackupConfig(chunk_size=8, workers=1))
    parent = tmp_path / "p.tar.gz"
    mgr.create_backup(ds, parent)

    def change(s):
        if fingerprint is None:
            del s["fingerprint"]
        else:
            s["fingerprint"] = fingerprint

    _resummarize(parent, change)
    out = tmp_path / "i.tar.gz"
    with pytest.raises(IntegrityError, match=r"p\.tar\.gz: summary.* fingerprint") as err:
        mgr.create_backup(ds, out, parent=parent)
    assert err.value.exit_code == 3
    assert not out.exists() and not list(tmp_path.glob(".*i.tar.gz*"))
    with pytest.raises(IntegrityError, match="fingerprint"):
        archive_fingerprint(parent)
    ds.close()


def test_a_parent_pruned_before_its_hold_fails_the_backup_at_its_start(tmp_path, monkeypatch):
    """A prune that ran between the opening of the parent and its hold (it saw no hold) may
    have deleted it: the backup says so right after taking its holds, before planning the
    store, not after the whole backup (it used to fail only at its end)."""
    from dsbackup import datasets
    from dsbackup.engine import incremental as inc

    datasets.write_lmdb(str(tmp_path / "s"), datasets.iter_small(300))
    parent = tmp_path / "full.tar.gz"
    BackupManager().create_backup(f"lmdb:{tmp_path / 's'}", parent)
    real_hold, planned = inc.hold_chain, []

    def pruned_first(archives, child):
        parent.unlink()  # the prune, an instant before the hold
        return real_hold(archives, child)

    monkeypatch.setattr(inc, "hold_chain", pruned_first)

    def plan(*a, **kw):
        planned.append(1)
        raise AssertionError("the store was planned although the parent was gone")

    monkeypatch.setattr(inc, "_plan", plan)
    out = tmp_path / "inc.tar.gz"
    with pytest.raises(MissingParentError, match="was deleted while this backup ran"):
        BackupManager().create_backup(f"lmdb:{tmp_path / 's'}", out, parent=parent)
    assert not planned and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no hold, no temp file left
