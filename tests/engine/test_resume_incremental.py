"""backup --resume of an incremental backup (docs/FORMAT.md §11.5): the dead writer's temp file
holds only its stored chunks; the references between them come back from the parent's index,
their raw bytes from the parent's chunks, and the planner goes on from the key after the cut.
The dead writer's file is a prefix of a finished incremental, named with a dead PID."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.datastores import open_datastore
from dsbackup.engine import parentraw
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import ArchiveError
from dsbackup.storage import resumestate
from tests.support.deadwriter import dead_writer_file, temp_files

CHUNK = 64
SAME = ("chunks", "records", "raw_bytes", "payload_bytes", "fingerprint",
        "content_fingerprint", "referenced_chunks", "stored_chunks")


def contents(ds) -> list[tuple[bytes, bytes]]:
    return [kv for keys, values in ds.scan_batches() for kv in zip(keys, values)]


def change(uri: str, seed: int) -> None:
    """Update and delete scattered records, add blocks: some chunks change, most do not."""
    rng = random.Random(seed)
    with open_datastore(uri) as ds:
        keys = [k for k, _ in contents(ds)]
        for k in rng.sample(keys, 12):
            ds.put(k, rng.randbytes(rng.randrange(40, 200)))
        for k in rng.sample(keys, 6):
            ds.delete(k)
        for k, v in datasets.iter_blocks(10, seed=seed, block_size=1500):
            ds.put(k, v)


@pytest.fixture
def chain(tmp_path, chain_made):
    """An LMDB store of blocks and records, its full backup, the store changed since, and the
    finished incremental of the changed store (what a resume must give). The archives are
    copied beside the test's (a parent is found beside its child); the store is read where it
    was made (a test that changes it copies it)."""
    uri, full, want = chain_made
    for p in (full, want):
        shutil.copy2(p, tmp_path / p.name)
    return uri, tmp_path / full.name, tmp_path / want.name


@pytest.fixture(scope="module")
def chain_made(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("chain")
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), [*datasets.iter_blocks(1500, block_size=1500),
                                   *datasets.iter_small(4000)])
    uri = f"lmdb:{src}"
    full = tmp_path / "full.tar.gz"
    BackupManager(BackupConfig(chunk_size=CHUNK, workers=2)).create_backup(uri, full)
    change(uri, 7)
    want = tmp_path / "want.tar.gz"
    BackupManager(BackupConfig(workers=2)).create_backup(uri, want, parent=full)
    return uri, full, want


def stored(archive: Path) -> list[int]:
    with ArchiveReader(archive) as r:
        return [i for i in range(r.chunk_count) if not r.index.entry(i).in_parent]


def killed_at(want: Path, final: Path, seq: int, extra: int = 0) -> Path:
    """A dead writer's temp file: `want` up to the end of stored chunk `seq`'s member (its
    catalog's when it has one), plus `extra` bytes of what followed."""
    with ArchiveReader(want) as r:
        e = r.index.catalog(seq) if r.index.catalog_count else r.index.entry(seq)
    return dead_writer_file(final, want.read_bytes()[:e.offset + e.length + extra])


def resume(uri, final, parent, **cfg):
    mgr = BackupManager(BackupConfig(**{"workers": 2, "resume": True, **cfg}))
    return mgr.create_backup(uri, final, parent=parent)


def restored(tmp_path, archive) -> list[tuple[bytes, bytes]]:
    dst = tmp_path / f"dst-{archive.name}"
    BackupManager().restore_backup(archive, f"lmdb:{dst}")
    with open_datastore(f"lmdb:{dst}", readonly=True) as ds:
        return contents(ds)


def same_as(final: Path, want: Path) -> dict:
    with ArchiveReader(final) as r, ArchiveReader(want) as w:
        for k in SAME:
            assert r.summary[k] == w.summary[k], k
        assert r.manifest == w.manifest
        assert list(r.index.entries()) == list(w.index.entries())
        return r.summary


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_resume_rebuilds_the_references_and_goes_on(tmp_path, chain, where, caplog,
                                                    monkeypatch):
    uri, full, want = chain
    seqs = stored(want)
    assert len(seqs) >= 3 and seqs[0] > 0 and seqs[-1] < len(seqs) * 50  # gaps: references
    seq = {"first": seqs[0], "middle": seqs[len(seqs) // 2], "last": seqs[-1]}[where]
    final = tmp_path / "a.tar.gz"
    killed_at(want, final, seq, extra=300)  # the next member torn (or the index, at the end)
    caplog.set_level(logging.WARNING, "dsbackup")
    read: list[int] = []  # parent chunks read for the references' raw bytes
    real = parentraw._read
    monkeypatch.setattr(parentraw, "_read", lambda p, s, t: read.extend(s) or real(p, s, t))
    meta = resume(uri, final, full)
    with ArchiveReader(want) as w, ArchiveReader(full) as f:
        below = sum(w.index.entry(i).in_parent for i in range(seq))
        unreferenced = f.chunk_count - w.summary["referenced_chunks"]
    # the references below the cut, or the parent chunks no chunk of the archive refers to
    assert len(read) == min(below, unreferenced)
    assert "resuming" in caplog.text and "of them references" in caplog.text
    assert verify_archive(final, deep=True).ok
    summary = same_as(final, want)
    assert summary["resumed"][0]["from_seq"] == seq + 1
    with open_datastore(uri, readonly=True) as ds:
        expected = contents(ds)
        assert summary["resumed"][0]["snapshot"] == ds.last_txn_id()
    assert meta.total_keys == len(expected)
    assert restored(tmp_path, final) == expected
    assert temp_files(tmp_path, final.name) == []


def test_a_temp_file_without_a_stored_chunk_starts_from_the_first_key(tmp_path, chain):
    uri, full, want = chain
    with ArchiveReader(want) as r:
        e = r.index.entry(stored(want)[0])
    final = tmp_path / "a.tar.gz"
    dead_writer_file(final, want.read_bytes()[:e.offset + 100])  # the first stored chunk torn
    resume(uri, final, full)
    assert verify_archive(final, deep=True).ok
    assert same_as(final, want)["resumed"][0]["from_seq"] == 0


def test_a_different_parent_is_refused_and_the_file_kept(tmp_path, chain):
    uri, full, want = chain
    other = tmp_path / "other.tar.gz"
    BackupManager(BackupConfig(workers=2)).create_backup(uri, other)  # the changed store
    final = tmp_path / "a.tar.gz"
    tmp = killed_at(want, final, stored(want)[1])
    before = tmp.read_bytes()
    with pytest.raises(ArchiveError, match=r"cannot resume .*: parent is \"full.tar.gz "
                                           r"\(fingerprint [0-9a-f]{32}\)\" there, "
                                           r"\"other.tar.gz"):
        resume(uri, final, other)
    with pytest.raises(ArchiveError, match=r"cannot resume .*: parent is \"full.tar.gz .*\" "
                                           "there, null now"):
        BackupManager(BackupConfig(workers=2, resume=True)).create_backup(uri, final)
    assert tmp.read_bytes() == before and not final.exists()
    resume(uri, final, full)  # the right parent: resumed
    assert verify_archive(final, deep=True).ok
    same_as(final, want)


def test_a_resumed_resume_is_resumed_again(tmp_path, chain):
    """The first resume is killed after writing on: its epoch is kept, the second goes on."""
    uri, full, want = chain
    seqs = stored(want)
    final = tmp_path / "a.tar.gz"
    killed_at(want, final, seqs[1])
    resume(uri, final, full)
    first = final.read_bytes()
    final.unlink()
    with ArchiveReader(want) as w:
        e = w.index.entry(seqs[-2])
    tmp = dead_writer_file(final, first[:e.offset + e.length])  # the first resume's, killed
    os.setxattr(tmp, "user.dsbackup.resumed",
                b'[{"epoch": 1, "from_seq": %d, "snapshot": null}]' % (seqs[1] + 1))
    resume(uri, final, full)
    assert verify_archive(final, deep=True).ok
    summary = same_as(final, want)
    assert [e["from_seq"] for e in summary["resumed"]] == [seqs[1] + 1, seqs[-2] + 1]


def test_a_parent_chunk_gone_from_between_stored_chunks_cuts_before_them(tmp_path):
    """A gap whose parent chunks are not exactly the references (the store lost a whole
    parent chunk there) is not guessed: the file is cut before the stored chunk after it."""
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(4000))
    uri = f"lmdb:{src}"
    full = tmp_path / "full.tar.gz"
    BackupManager(BackupConfig(chunk_size=CHUNK, workers=2)).create_backup(uri, full)
    with ArchiveReader(full) as r:
        gone = r.index.entry(20)
        changed = r.index.entry(40).first_key
    with open_datastore(uri) as ds:  # chunk 20's keys deleted, a value in chunk 40 changed
        for k, _ in [kv for kv in contents(ds) if gone.first_key <= kv[0] <= gone.last_key]:
            ds.delete(k)
        ds.put(changed, b"changed")
    want = tmp_path / "want.tar.gz"
    BackupManager(BackupConfig(workers=2)).create_backup(uri, want, parent=full)
    seqs = stored(want)
    final = tmp_path / "a.tar.gz"
    killed_at(want, final, seqs[-1])
    resume(uri, final, full)
    with ArchiveReader(final) as r:
        from_seq = r.summary["resumed"][0]["from_seq"]
    assert from_seq < seqs[-1]  # not kept: the gap before it has a parent chunk too many
    assert verify_archive(final, deep=True).ok
    same_as(final, want)
    with open_datastore(uri, readonly=True) as ds:
        assert restored(tmp_path, final) == contents(ds)


@pytest.mark.parametrize("max_names", [None, 40])
def test_a_flatfs_incremental_is_resumed(tmp_path, max_names):
    """The flatfs path (listing speed): the clean chunks are found from the cut's key on; over
    max_names, bucket by bucket from the cut's key on (engine/flatfs_buckets.py)."""
    rng = random.Random(5)
    uri = f"flatfs:{tmp_path / 'src'}"
    run = uri if max_names is None else f"{uri}?max_names={max_names}"

    def blocks(n):
        out = {}
        for _ in range(n):
            v = rng.randbytes(rng.randrange(100, 1500))
            out[b"/" + datasets.block_key(v)[len(b"/blocks/"):]] = v
        return out

    with open_datastore(uri, sync=False) as ds:  # a source: no fsyncs
        recs = blocks(900)
        ds.put_many(sorted(recs), [recs[k] for k in sorted(recs)])
    cfg = dict(chunk_size=8, chunk_max_bytes=4096, workers=2)
    full = tmp_path / "full.tar.gz"
    BackupManager(BackupConfig(**cfg)).create_backup(uri, full)
    with open_datastore(uri, sync=False) as ds:
        new = blocks(15)
        ds.put_many(sorted(new), [new[k] for k in sorted(new)])
        for k in rng.sample(sorted(recs), 8):
            ds.delete(k)
    want = tmp_path / "want.tar.gz"
    BackupManager(BackupConfig(**cfg)).create_backup(run, want, parent=full)
    seqs = stored(want)
    final = tmp_path / "a.tar.gz"
    killed_at(want, final, seqs[len(seqs) // 2], extra=50)
    resume(run, final, full, **cfg)
    assert verify_archive(final, deep=True).ok
    summary = same_as(final, want)
    assert summary["resumed"] == [{"epoch": 1, "from_seq": seqs[len(seqs) // 2] + 1,
                                   "snapshot": None}]
    dst = tmp_path / "dst"
    BackupManager().restore_backup(final, f"flatfs:{dst}")
    with open_datastore(uri, readonly=True) as a, open_datastore(f"flatfs:{dst}") as b:
        assert contents(a) == contents(b)


def test_an_encrypted_incremental_is_resumed_under_a_new_epoch(tmp_path, chain):
    from dsbackup.archive.crypto import KeyMaterial, using_key

    src = tmp_path / "src"  # a copy: this test changes the store
    shutil.copytree(chain[0].removeprefix("lmdb:"), src)
    uri = f"lmdb:{src}"
    key = KeyMaterial(key=b"k" * 32)
    full = tmp_path / "efull.tar.gz"
    BackupManager(BackupConfig(chunk_size=CHUNK, workers=2, encryption=key)).create_backup(
        uri, full)
    change(uri, 8)
    want = tmp_path / "ewant.tar.gz"
    BackupManager(BackupConfig(workers=2, encryption=key)).create_backup(uri, want,
                                                                         parent=full)
    with ArchiveReader(want, key=key) as r:
        seqs = [i for i in range(r.chunk_count) if not r.index.entry(i).in_parent]
        e = r.index.entry(seqs[len(seqs) // 2])
    final = tmp_path / "a.tar.gz"
    dead_writer_file(final, want.read_bytes()[:e.offset + e.length + 99],
                     sealing=resumestate.WRITING)
    resume(uri, final, full, encryption=key)
    with using_key(key):
        assert verify_archive(final, deep=True).ok
    with ArchiveReader(final, key=key) as r, ArchiveReader(want, key=key) as w:
        for k in SAME:
            assert r.summary[k] == w.summary[k], k
        cut = r.summary["resumed"][0]["from_seq"]
        assert cut == seqs[len(seqs) // 2] + 1
        # every entry, references too, records the epoch of the run that wrote it (§11.4)
        assert [e.epoch for e in r.index.entries()] == [int(i >= cut)
                                                        for i in range(r.chunk_count)]
    BackupManager(BackupConfig(encryption=key)).restore_backup(final, f"lmdb:{tmp_path / 'd'}")
    with open_datastore(uri, readonly=True) as a, \
            open_datastore(f"lmdb:{tmp_path / 'd'}", readonly=True) as b:
        assert contents(a) == contents(b)


@pytest.fixture
def paged_chain(tmp_path, monkeypatch, paged_chain_made):
    """A paged parent and its paged incremental (256 chunks a page, about 5 pages), some
    pages with stored chunks, some only references (copied as `chain` does)."""
    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    uri, full, want = paged_chain_made
    for p in (full, want):
        shutil.copy2(p, tmp_path / p.name)
    return uri, tmp_path / full.name, tmp_path / want.name


@pytest.fixture(scope="module")
def paged_chain_made(tmp_path_factory):
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
        return _paged_chain(tmp_path_factory.mktemp("paged"))


def _paged_chain(tmp_path):
    src = tmp_path / "psrc"
    datasets.write_lmdb(str(src), datasets.iter_small(36000))
    uri = f"lmdb:{src}"
    full = tmp_path / "pfull.tar.gz"
    BackupManager(BackupConfig(chunk_size=32, workers=2, paged_index="always")).create_backup(
        uri, full)
    rng = random.Random(3)
    keys = [k for k, _ in contents_of(uri)]
    with open_datastore(uri) as ds:  # changes in pages 0, 2 and 4 only
        for lo, hi in ((0.05, 0.15), (0.45, 0.55), (0.85, 0.95)):
            for k in rng.sample(keys[int(lo * len(keys)):int(hi * len(keys))], 20):
                ds.put(k, rng.randbytes(80))
    want = tmp_path / "pwant.tar.gz"
    BackupManager(BackupConfig(workers=2)).create_backup(uri, want, parent=full)
    with ArchiveReader(want) as r:
        assert r.paged and r.index.page_count >= 4
    return uri, full, want


def contents_of(uri):
    with open_datastore(uri, readonly=True) as ds:
        return contents(ds)


def page_end(archive: Path, p: int) -> int:
    with ArchiveReader(archive) as r:
        root = r.index._root[p]
        return int(root["offset"]) + int(root["length"])


@pytest.mark.parametrize("cut", ["mid-page", "after-page", "before-first-page"])
def test_a_paged_incremental_resumes_from_its_last_page(tmp_path, paged_chain, cut):
    uri, full, want = paged_chain
    seqs = stored(want)
    final = tmp_path / "a.tar.gz"
    data = want.read_bytes()
    if cut == "mid-page":  # a stored chunk in page 2: cut back to the end of page 1
        seq = next(s for s in seqs if 512 <= s < 768)
        with ArchiveReader(want) as r:
            e = r.index.entry(seq)
        dead_writer_file(final, data[:e.offset + e.length + 20])
        kept = 2
    elif cut == "after-page":
        dead_writer_file(final, data[:page_end(want, 3)])
        kept = 4
    else:
        with ArchiveReader(want) as r:
            e = r.index.entry(seqs[1])
        dead_writer_file(final, data[:e.offset + e.length])
        kept = 0
    resume(uri, final, full)
    assert verify_archive(final, deep=True).ok
    summary = same_as(final, want)
    assert summary["resumed"][0]["from_seq"] == kept * 256
    assert restored(tmp_path, final) == contents_of(uri)


def test_a_page_whose_references_are_not_the_parents_is_not_kept(tmp_path, paged_chain):
    """The rescan checks every reference of a kept page against the parent entry it names:
    with another parent's index (the same store, other chunks) no page is kept."""
    from dsbackup.archive.resume import rescan

    uri, full, want = paged_chain
    tmp = tmp_path / "killed"
    tmp.write_bytes(want.read_bytes()[:page_end(want, 2)])
    other = tmp_path / "other.tar.gz"
    BackupManager(BackupConfig(chunk_size=31, workers=2, paged_index="always")).create_backup(
        uri, other)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        with ArchiveReader(full) as p:
            assert rescan(fd, "t", page_entries=256, parent=p.index).next_seq == 3 * 256
        with ArchiveReader(other) as p:
            state = rescan(fd, "t", page_entries=256, parent=p.index)
    finally:
        os.close(fd)
    assert state.next_seq == 0 and state.referenced == 0 and state.dropped > 0


def test_an_encrypted_paged_incremental_is_resumed(tmp_path, monkeypatch):
    from dsbackup.archive.crypto import KeyMaterial, using_key

    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    key = KeyMaterial(key=b"e" * 32)
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(24000))
    uri = f"lmdb:{src}"
    full = tmp_path / "full.tar.gz"
    BackupManager(BackupConfig(chunk_size=32, workers=2, paged_index="always",
                               encryption=key)).create_backup(uri, full)
    change(uri, 9)
    want = tmp_path / "want.tar.gz"
    BackupManager(BackupConfig(workers=2, encryption=key)).create_backup(uri, want,
                                                                         parent=full)
    with ArchiveReader(want, key=key) as r:
        assert r.paged and r.index.page_count >= 2
        root = r.index._root[1]
    final = tmp_path / "a.tar.gz"
    dead_writer_file(final, want.read_bytes()[:int(root["offset"]) + int(root["length"]) + 500],
                     sealing=resumestate.WRITING)
    resume(uri, final, full, encryption=key)
    with using_key(key):
        assert verify_archive(final, deep=True).ok
    with ArchiveReader(final, key=key) as r, ArchiveReader(want, key=key) as w:
        for k in SAME:
            assert r.summary[k] == w.summary[k], k
        assert r.summary["resumed"][0]["from_seq"] == 512
    BackupManager(BackupConfig(encryption=key)).restore_backup(final, f"lmdb:{tmp_path / 'd'}")
    assert contents_of(f"lmdb:{tmp_path / 'd'}") == contents_of(uri)


def test_a_relative_source_names_the_same_store_from_another_directory(tmp_path, monkeypatch):
    """An incremental of a relative LMDB URI recorded it as given (`lmdb:s`): `inspect` did
    not say which store it was, and `--resume` from another working directory took another
    store of the same relative name as the killed run's, mixing two stores in one archive.
    The manifest records the absolute path (as a full backup does); a resume from elsewhere
    is refused (exit 2, the file kept) and one from the same directory goes on."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for d, seed in ((a, 1), (b, 2)):
        d.mkdir()
        rng = random.Random(seed)
        datasets.write_lmdb(str(d / "s"), ((b"/r/%06d" % i, rng.randbytes(100))
                                          for i in range(3000)))
    out.mkdir()
    mgr = BackupManager(BackupConfig(workers=1, chunk_size=CHUNK))
    monkeypatch.chdir(a)
    mgr.create_backup("lmdb:s", out / "full.tar.gz")
    change("lmdb:s", 3)
    want = out / "want.tar.gz"
    mgr.create_backup("lmdb:s", want, parent=out / "full.tar.gz")
    with ArchiveReader(want) as r:
        assert r.manifest["source"]["uri"] == f"lmdb:{a / 's'}"
    final = out / "inc.tar.gz"
    tmp = killed_at(want, final, stored(want)[0])
    monkeypatch.chdir(b)
    with pytest.raises(ArchiveError, match=r"cannot resume .*source uri is .*a/s.* there, "
                                           r".*b/s.* now"):
        resume("lmdb:s", final, out / "full.tar.gz", chunk_size=CHUNK)
    assert tmp.exists() and not final.exists()
    monkeypatch.chdir(a)
    resume("lmdb:s", final, out / "full.tar.gz", chunk_size=CHUNK)
    assert verify_archive(final).ok
