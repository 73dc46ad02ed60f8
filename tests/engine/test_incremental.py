"""Incremental backups: exact restores, chains, missing parents, sizes, consolidate, helpers."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from dsbackup import datasets
from dsbackup.archive.consolidate import consolidate_archive
from dsbackup.archive.lineage import archive_fingerprint, choose_parent, parent_of
from dsbackup.archive.listing import iter_listing
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import (
    ArchiveExistsError,
    IntegrityError,
    MissingParentError,
    PathConflictError,
)


def contents(ds) -> dict[bytes, bytes]:
    return {k: v for keys, values in ds.scan_batches() for k, v in zip(keys, values)}


def restored(archive, tmp_path, name, **kw) -> dict[bytes, bytes]:
    dst = open_datastore(f"lmdb:{tmp_path / name}")
    try:
        restore_archive(archive, dst, **kw)
        return contents(dst)
    finally:
        dst.close()


def member_set(path) -> set[tuple[bytes, int]]:
    with ArchiveReader(path) as r:
        return {(e.first_key, e.payload_xxh3) for e in r.index.entries()}


def change_one_percent(ds, model: dict[bytes, bytes], rng: random.Random, tag: int) -> int:
    """Update, insert and delete 1% of the keys in total; returns how many keys changed."""
    n = max(3, len(model) // 100)
    keys = sorted(model)
    upd = rng.sample(keys, n // 3)
    dele = rng.sample([k for k in keys if k not in upd], n // 3)
    for k in upd:
        model[k] = rng.randbytes(rng.randrange(20, 300))
        ds.put(k, model[k])
    for k in dele:
        del model[k]
        ds.delete(k)
    for _ in range(n - 2 * (n // 3)):
        k = b"/r/%08d/new%d" % (rng.randrange(10**6), tag)
        model[k] = rng.randbytes(50)
        ds.put(k, model[k])
    return n


@pytest.fixture
def small_store(tmp_path):
    rng = random.Random(7)
    model = {b"/r/%08d" % rng.randrange(10**6): rng.randbytes(rng.randrange(20, 300))
             for _ in range(20000)}
    ds = open_datastore(f"lmdb:{tmp_path / 'src'}")
    keys = sorted(model)
    ds.put_many(keys, [model[k] for k in keys])
    yield ds, model, rng
    ds.close()


def test_one_percent_change_restores_exactly_and_stores_only_changed_chunks(tmp_path,
                                                                             small_store):
    ds, model, rng = small_store
    mgr = BackupManager(BackupConfig(chunk_size=8, workers=2))
    full = mgr.create_backup(ds, tmp_path / "full0.tar.gz")
    changed = change_one_percent(ds, model, rng, 1)
    inc = mgr.create_backup(ds, tmp_path / "inc1.tar.gz", parent=tmp_path / "full0.tar.gz")
    # a full backup of the new state tells exactly which chunks are new
    ref = mgr.create_backup(ds, tmp_path / "full1.tar.gz")
    new_chunks = member_set(tmp_path / "full1.tar.gz") - member_set(tmp_path / "full0.tar.gz")
    with ArchiveReader(tmp_path / "inc1.tar.gz") as r:
        stored = [e for e in r.index.entries() if not e.in_parent]
        assert {(e.first_key, e.payload_xxh3) for e in stored} == new_chunks
        assert r.summary["content_fingerprint"] == ref.fingerprint
        assert r.summary["stored_chunks"] == len(stored)
    with ArchiveReader(tmp_path / "full1.tar.gz") as f:
        new_bytes = sum(e.length for e in f.index.entries()
                        if (e.first_key, e.payload_xxh3) in new_chunks)
        mean_member = f.trailer.index_offset / f.chunk_count
    # size: the changed chunks (each changed key touches at most ~2 chunks) plus a few chunks
    assert len(stored) <= 2 * changed + 3
    with ArchiveReader(tmp_path / "inc1.tar.gz") as r:
        inc_chunk_bytes = r.summary["chunk_bytes"]
    assert inc_chunk_bytes <= new_bytes + 3 * mean_member
    assert inc.compressed_size < 0.3 * full.compressed_size
    assert inc.total_keys == len(model) and inc.parent == full.fingerprint
    assert restored(tmp_path / "inc1.tar.gz", tmp_path, "dst") == model
    # consolidate: a self-contained archive with the same restore
    w = consolidate_archive(tmp_path / "inc1.tar.gz", tmp_path / "cons.tar.gz")
    assert w.fingerprint == ref.fingerprint
    with ArchiveReader(tmp_path / "cons.tar.gz") as c:
        assert c.manifest["parent"] is None
        assert not any(e.in_parent for e in c.index.entries())
    (tmp_path / "full0.tar.gz").unlink()  # consolidated archive needs no parent
    assert restored(tmp_path / "cons.tar.gz", tmp_path, "dst2") == model
    assert mgr.verify_backup(tmp_path / "cons.tar.gz").ok


def test_chain_of_ten_restores_exactly_and_missing_middle_parent_fails_before_writing(
        tmp_path, small_store):
    ds, model, rng = small_store
    mgr = BackupManager(BackupConfig(chunk_size=16, workers=2))
    paths = [tmp_path / "a00.tar.gz"]
    mgr.create_backup(ds, paths[0])
    states = [dict(model)]
    for g in range(1, 11):
        change_one_percent(ds, model, rng, g)
        p = tmp_path / f"a{g:02d}.tar.gz"
        mgr.create_backup(ds, p, parent=paths[-1])
        paths.append(p)
        states.append(dict(model))
    assert parent_of(paths[10]) == archive_fingerprint(paths[9])
    assert parent_of(paths[0]) is None
    for g in (10, 4):
        assert restored(paths[g], tmp_path, f"dst{g}") == states[g]
    rep = mgr.verify_backup(paths[10])
    assert rep.ok, rep.errors
    assert len(rep.parents) == 10 and rep.records == len(states[10])
    paths[5].unlink()
    target = tmp_path / "never"
    with pytest.raises(MissingParentError, match="a05.tar.gz"):
        restore_archive(paths[10], f"lmdb:{target}")
    assert not target.exists()  # nothing was created or written
    bad = mgr.verify_backup(paths[10])
    assert not bad.ok and "a05.tar.gz" in bad.errors[0]
    assert restored(paths[4], tmp_path, "dst4b") == states[4]  # older links unaffected


def test_parents_found_in_parent_dir_and_replaced_parent_is_named(tmp_path, small_store):
    ds, model, rng = small_store
    mgr = BackupManager(BackupConfig(chunk_size=16, workers=1))
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    mgr.create_backup(ds, tmp_path / "old" / "p.tar.gz")
    change_one_percent(ds, model, rng, 1)
    mgr.create_backup(ds, tmp_path / "new" / "c.tar.gz", parent=tmp_path / "old" / "p.tar.gz")
    # found through the relative path hint, then through --parent-dir after a move
    assert restored(tmp_path / "new" / "c.tar.gz", tmp_path, "d1") == model
    shutil.move(tmp_path / "old", tmp_path / "elsewhere")
    with pytest.raises(MissingParentError, match="p.tar.gz.*missing"):
        restored(tmp_path / "new" / "c.tar.gz", tmp_path, "d2")
    assert restored(tmp_path / "new" / "c.tar.gz", tmp_path, "d3",
                    parent_dirs=[tmp_path / "elsewhere"]) == model
    # another archive under the parent's name is refused, naming it
    other = open_datastore("memory:")
    other.put(b"/x", b"y")
    mgr.create_backup(other, tmp_path / "elsewhere" / "p2.tar.gz")
    shutil.move(tmp_path / "elsewhere" / "p2.tar.gz", tmp_path / "new" / "p.tar.gz")
    with pytest.raises(MissingParentError, match="p.tar.gz.*altered or replaced"):
        ArchiveReader(tmp_path / "new" / "c.tar.gz").open_parents()


def test_incremental_answers_like_a_full_backup_and_is_a_valid_tar_gz(tmp_path, small_store):
    ds, model, rng = small_store
    mgr = BackupManager(BackupConfig(chunk_size=32, workers=2, include_metadata=True))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    change_one_percent(ds, model, rng, 1)
    inc = mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    full = mgr.create_backup(ds, tmp_path / "f.tar.gz")
    with ArchiveReader(tmp_path / "i.tar.gz") as ri, ArchiveReader(tmp_path / "f.tar.gz") as rf:
        assert list(iter_listing(ri)) == list(iter_listing(rf))  # ls, from catalogs
        assert list(iter_listing(ri, b"/r/00", b"/r/01")) == list(
            iter_listing(rf, b"/r/00", b"/r/01"))
        for k in ("records", "raw_bytes", "payload_bytes", "chunks"):
            assert ri.summary[k] == rf.summary[k]
    meta_i = mgr.inspect(tmp_path / "i.tar.gz")
    meta_f = mgr.inspect(tmp_path / "f.tar.gz")
    assert (meta_i.total_keys, meta_i.total_size, meta_i.chunks) == (
        meta_f.total_keys, meta_f.total_size, meta_f.chunks)
    assert meta_i.parent is not None and meta_f.parent is None
    assert inc.fingerprint != full.fingerprint  # identity differs: it names its parent
    vi, vf = mgr.verify_backup(tmp_path / "i.tar.gz"), mgr.verify_backup(tmp_path / "f.tar.gz")
    assert vi.ok and vf.ok and (vi.chunks, vi.records) == (vf.chunks, vf.records)
    assert vi.referenced_chunks > 0
    assert subprocess.run(["gzip", "-t", str(tmp_path / "i.tar.gz")]).returncode == 0
    names = subprocess.run(["tar", "-tzf", str(tmp_path / "i.tar.gz")], capture_output=True,
                           text=True, check=True).stdout.split()
    assert len([n for n in names if n.startswith("dsbackup/chunks/")]) == \
        inc.chunks - vi.referenced_chunks
    assert restored(tmp_path / "i.tar.gz", tmp_path, "d", prefix="/r") == model
    from dsbackup.archive.salvage import salvage

    sal = salvage(tmp_path / "i.tar.gz")  # referenced chunks are not "lost"
    assert sal.complete and len(sal.referenced) == vi.referenced_chunks
    assert len(sal.chunks) + len(sal.referenced) == inc.chunks


@pytest.mark.parametrize("kind", ["memory", "flatfs", "leveldb", "sqlite"])
def test_every_backend(tmp_path, kind):
    rng = random.Random(3)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    model = {b"/" + bytes(rng.choice(alphabet) for _ in range(12)): rng.randbytes(
        rng.randrange(0, 2000)) for _ in range(600)}
    ds = open_datastore("memory:" if kind == "memory" else f"{kind}:{tmp_path / 'src'}")
    keys = sorted(model)
    ds.put_many(keys, [model[k] for k in keys])
    mgr = BackupManager(BackupConfig(chunk_size=10, workers=2,
                                     exclude_patterns=["/A*"]))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    for k in rng.sample(keys, 6):
        model[k] = b"changed"
        ds.put(k, b"changed")
    inc = mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    want = {k: v for k, v in model.items() if not k.startswith(b"/A")}
    assert inc.statistics.skipped_keys == len(model) - len(want)
    assert restored(tmp_path / "i.tar.gz", tmp_path, "dst") == want
    with ArchiveReader(tmp_path / "i.tar.gz") as r:
        assert 0 < r.summary["stored_chunks"] <= 12
    ds.close()


def _blocks_flatfs(path, n: int):
    ds = open_datastore(f"flatfs:{path}")
    recs = sorted((k[len(b"/blocks"):], v) for k, v in datasets.iter_blocks(n, block_size=4096))
    ds.put_many([k for k, _ in recs], [v for _, v in recs])
    return ds, dict(recs)


def test_content_addressed_blocks_are_referenced_without_reading_values(tmp_path):
    ds, model = _blocks_flatfs(tmp_path / "blocks", 64)
    mgr = BackupManager(BackupConfig(chunk_size=4, workers=1))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    # damage one block on disk without changing its size: with trusted keys it is not read
    victim = sorted(model)[10]
    path = next((tmp_path / "blocks").rglob(victim[1:].decode() + ".data"))
    path.write_bytes(b"\0" * path.stat().st_size)
    inc = mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    with ArchiveReader(tmp_path / "i.tar.gz") as r:
        assert r.summary["stored_chunks"] == 0 and r.summary["chunks_read_to_compare"] == 0
        assert r.summary["referenced_chunks"] == inc.chunks
    assert restored(tmp_path / "i.tar.gz", tmp_path, "d1") == model
    # trust off: the values are read, the damaged block found changed and stored
    mgr2 = BackupManager(BackupConfig(chunk_size=4, workers=1, trust_content_keys=False))
    mgr2.create_backup(ds, tmp_path / "i2.tar.gz", parent=tmp_path / "p.tar.gz")
    with ArchiveReader(tmp_path / "i2.tar.gz") as r:
        assert r.summary["stored_chunks"] == 1
        assert r.summary["chunks_read_to_compare"] == r.chunk_count
    assert mgr.verify_backup(tmp_path / "i.tar.gz", check_blocks=True).blocks_checked == 64
    bad = mgr.verify_backup(tmp_path / "i2.tar.gz", check_blocks=True)
    assert not bad.ok and victim[1:].decode() in bad.errors[0]
    ds.close()


def test_catalog_incremental_of_a_parent_without_catalog_stores_everything(tmp_path,
                                                                          small_store):
    ds, model, _ = small_store
    BackupManager(BackupConfig(chunk_size=64)).create_backup(ds, tmp_path / "p.tar.gz")
    mgr = BackupManager(BackupConfig(chunk_size=64, include_metadata=True))
    inc = mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    with ArchiveReader(tmp_path / "i.tar.gz") as r:
        assert r.summary["stored_chunks"] == inc.chunks and r.index.catalog_count == inc.chunks
    assert restored(tmp_path / "i.tar.gz", tmp_path, "d") == model


def test_unchanged_store_gives_an_archive_of_references_only(tmp_path, small_store):
    ds, model, _ = small_store
    mgr = BackupManager(BackupConfig(chunk_size=64))
    full = mgr.create_backup(ds, tmp_path / "p.tar.gz")
    inc = mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    with ArchiveReader(tmp_path / "i.tar.gz") as r:
        assert r.summary["stored_chunks"] == 0
        assert r.summary["content_fingerprint"] == full.fingerprint
    assert inc.fingerprint != full.fingerprint and inc.parent == full.fingerprint
    assert inc.compressed_size < 0.05 * full.compressed_size


def test_reference_to_a_chunk_the_parent_does_not_hold_is_an_error(tmp_path, small_store):
    ds, _, _ = small_store
    mgr = BackupManager(BackupConfig(chunk_size=64))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    ds.put(b"/r/00000000", b"first key changed")
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    # swap in a parent of other data under the right name and fingerprint check bypassed:
    other = open_datastore("memory:")
    other.put_many([b"/r/%08d" % i for i in range(50)], [b"v"] * 50)
    BackupManager(BackupConfig(chunk_size=64)).create_backup(other, tmp_path / "o.tar.gz")
    with ArchiveReader(tmp_path / "i.tar.gz") as r:
        from dsbackup.archive.chain import ParentChain
        chain = ParentChain.of_levels(r, [ArchiveReader(tmp_path / "o.tar.gz")])
        ref = next(i for i, e in enumerate(r.index.entries()) if e.in_parent)
        with pytest.raises(MissingParentError, match="o.tar.gz"):
            chain.locate(ref)


def test_choose_parent_makes_every_nth_backup_full(tmp_path, small_store):
    ds, model, rng = small_store
    mgr = BackupManager(BackupConfig(chunk_size=64))
    made: list = []
    kinds = []
    for run in range(7):
        parent = choose_parent(made, full_every=3)
        p = tmp_path / f"b{run}.tar.gz"
        mgr.create_backup(ds, p, parent=parent)
        kinds.append("full" if parent is None else "inc")
        made.append(p)
        ds.put(b"/r/%08d" % run, b"x")
    assert kinds == ["full", "inc", "inc", "full", "inc", "inc", "full"]
    assert choose_parent(made, full_every=1) is None
    assert choose_parent([], full_every=5) is None
    assert choose_parent(made + [tmp_path / "missing.tar.gz"], 5) == made[-1]


def test_damaged_parent_chunk_is_reported_naming_the_parent(tmp_path, small_store):
    ds, _, _ = small_store
    mgr = BackupManager(BackupConfig(chunk_size=64))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    with ArchiveReader(tmp_path / "p.tar.gz") as r:
        e = r.entry(2)
    data = bytearray((tmp_path / "p.tar.gz").read_bytes())
    data[e.offset + e.length // 2] ^= 1
    (tmp_path / "p.tar.gz").write_bytes(bytes(data))
    rep = mgr.verify_backup(tmp_path / "i.tar.gz")
    assert not rep.ok and "p.tar.gz: chunk 2" in rep.errors[0]
    with pytest.raises(IntegrityError, match="p.tar.gz: chunk 2"):
        restored(tmp_path / "i.tar.gz", tmp_path, "d")


def test_lmdb_uri_is_read_natively_with_the_same_result(tmp_path):
    rng = random.Random(11)
    model = {b"/r/%08d" % rng.randrange(10**6): rng.randbytes(rng.randrange(20, 300))
             for _ in range(5000)}
    model.update(datasets.iter_blocks(40, block_size=2048))
    datasets.write_lmdb(str(tmp_path / "src"), iter(model.items()))
    uri = f"lmdb:{tmp_path / 'src'}"
    mgr = BackupManager(BackupConfig(chunk_size=16, workers=2, exclude_patterns=["/r/*5"]))
    mgr.create_backup(uri, tmp_path / "p.tar.gz")
    with open_datastore(uri) as ds:
        change_one_percent(ds, model, rng, 1)
    native = mgr.create_backup(uri, tmp_path / "n.tar.gz", parent=tmp_path / "p.tar.gz")
    with open_datastore(uri, readonly=True) as ds:
        generic = mgr.create_backup(ds, tmp_path / "g.tar.gz", parent=tmp_path / "p.tar.gz")
    with ArchiveReader(tmp_path / "n.tar.gz") as n, ArchiveReader(tmp_path / "g.tar.gz") as g:
        def shape(r):
            return [(e.flags, e.payload_xxh3, e.member_xxh3, e.first_key, e.last_key,
                     e.offset if e.in_parent else None) for e in r.index.entries()]
        assert shape(n) == shape(g)
        assert n.summary["snapshot"] is not None and g.summary["snapshot"] is None
        assert n.summary["excluded_records"] == g.summary["excluded_records"] > 0
        assert 0 < n.summary["stored_chunks"] < n.chunk_count
    assert native.fingerprint == generic.fingerprint
    want = {k: v for k, v in model.items() if not (k.startswith(b"/r/") and k.endswith(b"5"))}
    assert restored(tmp_path / "n.tar.gz", tmp_path, "d") == want


def test_retention_helpers_keep_the_parent_chain(tmp_path, small_store):
    from dsbackup.archive.lineage import parent_map, required_archives

    ds, _, _ = small_store
    mgr = BackupManager(BackupConfig(chunk_size=64))
    a, b, c, d = (tmp_path / f"{n}.tar.gz" for n in "abcd")
    mgr.create_backup(ds, a)
    mgr.create_backup(ds, b, parent=a)  # unchanged: still its own fingerprint
    mgr.create_backup(ds, c, parent=b)
    mgr.create_backup(ds, d)
    assert archive_fingerprint(b) != archive_fingerprint(a)
    assert parent_map([a, b, c, d]) == {a: None, b: a, c: b, d: None}
    assert required_archives([c], [a, b, c, d]) == {a, b, c}
    assert required_archives([d, b], [a, b, c, d]) == {a, b, d}
    with pytest.raises(ArchiveExistsError, match="already exists"):
        mgr.create_backup(ds, a, parent=c)
    with pytest.raises(ArchiveExistsError, match=r"1 archive\(s\) use it as their parent"):
        mgr.create_backup(ds, a, parent=c, overwrite=True)
    with pytest.raises(PathConflictError, match="an archive this one is made from"):
        BackupManager(BackupConfig(overwrite=True)).create_backup(ds, c, parent=c)
    assert parent_of(a) is None  # untouched


def test_reference_without_a_parent_in_the_manifest_is_an_integrity_error(tmp_path):
    from dsbackup.archive.index import ChunkEntry
    from dsbackup.archive.verify import verify_archive
    from dsbackup.archive.writer import ArchiveWriter

    manifest = {"format": "dsbackup", "version": 1, "settings": {}, "parent": None}
    with ArchiveWriter(tmp_path / "h.tar.gz", manifest=manifest,
                       parent_fingerprint="00" * 16) as w:
        w.add_reference(0, ChunkEntry(0, 0, 0, 30, 1, 5, 0, 6, b"/a", b"/a"), 3)
        w.finish()
    with ArchiveReader(tmp_path / "h.tar.gz") as r:
        assert r.entry(0).in_parent
        with pytest.raises(IntegrityError, match="names none"):
            r.read_chunk(0)
    rep = verify_archive(tmp_path / "h.tar.gz")
    assert not rep.ok and any("fingerprint" in e for e in rep.errors)


@pytest.mark.parametrize("settings", ["fast", ["x"], {"compression_level": "9"},
                                      {"compression_level": True}])
def test_consolidate_takes_a_manifest_settings_of_any_shape(tmp_path, settings):
    """The manifest's `settings` is informative (FORMAT.md §6): one of another shape (a
    hostile or hand-written archive; benchmarks/fuzz_archives.py) gives the default level,
    as an out-of-range level already did; it was 'internal error: AttributeError'."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from fuzzlib import model

    from dsbackup.archive.format import TYPE_MANIFEST
    from dsbackup.archive.verify import verify_archive

    ds = open_datastore(f"lmdb:{tmp_path / 's'}")
    ds.put_many([b"/k%04d" % i for i in range(300)], [b"v%d" % i for i in range(300)])
    mgr = BackupManager(BackupConfig(chunk_size=8, workers=1))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    ds.put(b"/k0150", b"changed")
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    ds.close()
    a = model.parse((tmp_path / "i.tar.gz").read_bytes())
    m = a.find(TYPE_MANIFEST)
    doc = json.loads(m.data)
    doc["settings"] = settings
    m.data, m.dirty = json.dumps(doc).encode(), True
    (tmp_path / "i.tar.gz").write_bytes(model.serialize(a))
    consolidate_archive(tmp_path / "i.tar.gz", tmp_path / "c.tar.gz")
    assert verify_archive(tmp_path / "c.tar.gz").ok
