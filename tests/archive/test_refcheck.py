"""The bulk reference check (archive/refcheck.py) judges every reference exactly as
ParentChain.locate does: a reference passes in bulk only when locate passes it, over paged and
single indexes, one and two hops, a wrong parent and a chain cut short."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dsbackup.archive.chain import ParentChain
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.refcheck import suspect_references
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import IntegrityError, MissingParentError


def _put(ds, rng: random.Random, n: int, tag: bytes) -> None:
    keys = sorted({b"/r/%08d" % rng.randrange(10**6) for _ in range(n)})
    ds.put_many(keys, [tag + rng.randbytes(rng.randrange(5, 60)) for _ in keys])


@pytest.fixture(params=["always", "never"])
def chain(request, tmp_path, monkeypatch) -> tuple[Path, Path, Path, Path]:
    """full <- inc1 <- inc2 of a changing store, and `other`: a full backup of other data
    with the same chunk size; paged (256 entries a page) or single indexes."""
    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    rng = random.Random(3)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    _put(ds, rng, 3000, b"a")
    mgr = BackupManager(BackupConfig(chunk_size=4, paged_index=request.param))
    paths = [tmp_path / f"{n}.tar.gz" for n in ("full", "inc1", "inc2", "other")]
    mgr.create_backup(ds, paths[0])
    _put(ds, rng, 40, b"b")
    mgr.create_backup(ds, paths[1], parent=paths[0])
    _put(ds, rng, 40, b"c")
    mgr.create_backup(ds, paths[2], parent=paths[1])
    ds.close()
    other = open_datastore(f"lmdb:{tmp_path / 'o'}")
    _put(other, random.Random(4), 3000, b"a")
    mgr.create_backup(other, paths[3])
    other.close()
    return paths[0], paths[1], paths[2], paths[3]


def _locate_fails(r: ArchiveReader, levels: list[ArchiveReader]) -> tuple[list[int], list[int]]:
    """(stored seqs, references locate rejects), one entry at a time."""
    walk = ParentChain.of_levels(r, levels)
    stored, bad = [], []
    for i, e in enumerate(r.index.entries()):
        if not e.in_parent:
            stored.append(i)
            continue
        try:
            walk.locate(i)
        except (MissingParentError, IntegrityError):
            bad.append(i)
    return stored, bad


def _agree(top: Path, levels: list[Path]) -> tuple[list[int], list[int]]:
    readers = [ArchiveReader(p) for p in levels]
    try:
        with ArchiveReader(top) as r:
            stored, suspects = suspect_references(r, readers)
            assert (stored.tolist(), suspects.tolist()) == _locate_fails(r, readers)
            return stored.tolist(), suspects.tolist()
    finally:
        for x in readers:
            x.close()


def test_a_sound_chain_has_no_suspects_over_two_hops(chain):
    full, inc1, inc2, _ = chain
    with ArchiveReader(inc2) as r:
        refs = [i for i, e in enumerate(r.index.entries()) if e.in_parent]
        deep = ParentChain.of_levels(r, [ArchiveReader(inc1), ArchiveReader(full)])
        # some references lead through inc1 down to full: the walk has two hops
        assert any(deep.locate(i)[0].path == full for i in refs)
    stored, suspects = _agree(inc2, [inc1, full])
    assert suspects == [] and stored and len(refs) > 500


def test_a_wrong_parent_and_a_short_chain_give_the_references_locate_rejects(chain):
    full, inc1, inc2, other = chain
    _, wrong = _agree(inc2, [other, full])
    assert len(wrong) > 500  # other data: nearly every reference is rejected
    _, short = _agree(inc2, [inc1])  # the references that lead on into full
    assert short
    _, swapped = _agree(inc1, [inc2])  # another archive of the same store
    assert swapped


def test_key_comparison_names_the_rows_that_differ_contiguous_or_not():
    import numpy as np

    from dsbackup.archive.refcheck import _same_keys

    def blob(b: bytes) -> np.ndarray:
        return np.frombuffer(b, np.uint8)

    a = blob(b"abcdefghij")
    lens = np.array([3, 3, 4])
    off = np.array([0, 3, 6])
    assert _same_keys(a, off, blob(b"xxabcdefghij"), off + 2, lens).tolist() == [True] * 3
    # one byte differs in row 1: only row 1 fails (the slices differ: rows are attributed)
    assert _same_keys(a, off, blob(b"abcdeXghij"), off, lens).tolist() == [True, False, True]
    # rows not one after another in the other blob
    b, b_off = blob(b"ghij..def..abc"), np.array([11, 6, 0])
    assert _same_keys(a, off, b, b_off, lens).tolist() == [True, True, True]
    assert _same_keys(a, off, b, np.array([11, 6, 1]), lens).tolist() == [True, True, False]


def test_a_single_index_block_is_checked_for_key_order():
    """Index.block (a version-1 index as one block) gives only entries in strict key order,
    as a page of a paged index does: a writer of references relies on it."""
    from dsbackup.archive.index import ChunkEntry, Index, IndexBuilder

    def index(keys: list[tuple[bytes, bytes]]) -> Index:
        b = IndexBuilder()
        for i, (f, last) in enumerate(keys):
            b.add_chunk(ChunkEntry(i, 100 + i, 10, 5, 1, 7, 8, 9, f, last))
        return Index(b.encode(0, 0))

    first, table, keys = index([(b"/a", b"/b"), (b"/c", b"/d")]).block(1)
    assert first == 0 and len(table) == 2 and keys.tobytes() == b"/a/b/c/d"
    for bad in ([(b"/a", b"/c"), (b"/c", b"/d")], [(b"/b", b"/a")]):
        with pytest.raises(IntegrityError, match="does not follow"):
            index(bad).block(0)


def test_resolved_references_lead_where_locate_does_and_members_check(chain):
    """resolved_references (the incremental's check of the parent members it refers to)
    gives, for every reference, the archive and seq locate gives, over one and two hops and
    paged or single indexes; check_stored_members passes them, and names a damaged one."""
    from dsbackup.archive.refcheck import resolved_references

    full, inc1, inc2, _ = chain
    levels = [ArchiveReader(inc1), ArchiveReader(full)]
    try:
        with ArchiveReader(inc2) as r:
            walk = ParentChain.of_levels(r, levels)
            want = {i: walk.locate(i) for i, e in enumerate(r.index.entries()) if e.in_parent}
            got = {}
            for k, seqs, refs in resolved_references(r, levels):
                assert seqs.tolist() == sorted(seqs.tolist())
                for seq, i in zip(seqs.tolist(), refs.tolist()):
                    got[i] = (levels[k], seq)
                levels[k].check_stored_members(seqs)
            assert got == want and {h.path for h, _ in got.values()} == {inc1, full}
    finally:
        for x in levels:
            x.close()
    with ArchiveReader(full) as r:
        e = r.entry(7)
    with open(full, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(e.offset + e.length // 2)
        f.write(bytes([b[0] ^ 1]))
    with ArchiveReader(full) as r, pytest.raises(IntegrityError, match="chunk 7 .*checksum"):
        r.check_stored_members(list(range(r.chunk_count)))


def test_check_stored_members_holds_a_bounded_batch_of_entries(tmp_path, monkeypatch):
    """The parent members an incremental refers to are checked a batch of index entries at a
    time: memory does not grow with the chain's chunk count (it held every offset, length,
    digest and catalog entry as Python objects at once: gigabytes for millions of chunks).
    Every chunk and catalog is still checked, and a damaged catalog past the first batch is
    named."""
    import random
    import tracemalloc

    import numpy as np

    from dsbackup.archive import reader as reader_mod
    from dsbackup.datastores import open_datastore
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    rng = random.Random(3)
    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    keys = [b"/k/%06d" % i for i in range(12000)]
    ds.put_many(keys, [rng.randbytes(8) for _ in keys])
    path = tmp_path / "a.tar.gz"
    BackupManager(BackupConfig(chunk_size=1, include_metadata=True, workers=1, paged_index="never")).create_backup(
        ds, path)
    ds.close()
    monkeypatch.setattr(reader_mod, "STORED_BATCH", 256)
    with ArchiveReader(path) as r:
        n = r.chunk_count
        assert n > 8000 and r.index.catalog_count == n
        seen = [0]
        real = r._src.xxh3

        def counted(o: int, length: int) -> int:
            seen[0] += 1
            return real(o, length)

        monkeypatch.setattr(r._src, "xxh3", counted)
        r.index.block(0)  # (the index's own first-use cost is not the check's)
        tracemalloc.start()
        try:
            r.check_stored_members(np.arange(n), catalog=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert seen[0] == 2 * n  # each member and each catalog hashed once
        assert peak < 400_000, peak  # (every entry at once: ~3 MB here)
        c = r.index.catalog(n - 5)
    with open(path, "r+b") as f:
        f.seek(c.offset + c.length // 2)
        b = f.read(1)
        f.seek(c.offset + c.length // 2)
        f.write(bytes([b[0] ^ 1]))
    with ArchiveReader(path) as r, pytest.raises(IntegrityError, match=f"catalog {n - 5}: "):
        r.check_stored_members(range(n), catalog=True)
