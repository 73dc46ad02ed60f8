"""A quick verify of an incremental given its parent chain's `checked_chain` (the scheduler's
verify after a backup on a chain it has just verified): the references are compared with the
chain's entries, their members not read, and only while the chain's files are the very files,
unwritten since, that the earlier verify hashed (docs/SCHEDULER.md "Incremental schedules")."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import chain_identity, verify_archive
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def identity(*paths) -> list[str]:
    readers = [ArchiveReader(p) for p in paths]
    try:
        return chain_identity(readers)
    finally:
        for r in readers:
            r.close()


@pytest.fixture
def chain(tmp_path):
    """A full backup p and an incremental i on it, referring to most of p's chunks."""
    rng = random.Random(3)
    ds = open_datastore(f"lmdb:{tmp_path / 'src'}")
    keys = sorted({b"/r/%08d" % rng.randrange(10**6) for _ in range(5000)})
    ds.put_many(keys, [rng.randbytes(rng.randrange(20, 200)) for _ in keys])
    mgr = BackupManager(BackupConfig(chunk_size=64))
    mgr.create_backup(ds, tmp_path / "p.tar.gz")
    ds.put(keys[0], b"changed")
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    ds.close()
    return tmp_path / "p.tar.gz", tmp_path / "i.tar.gz"


@pytest.fixture
def reads(monkeypatch):
    """Archive file name -> chunk seqs whose member was hashed."""
    seen: dict[str, list[int]] = {}
    one = ArchiveReader._checked_member

    def checked_member(self, i, *, catalog, keep):
        if not catalog:
            seen.setdefault(os.path.basename(str(self.path)), []).append(i)
        return one(self, i, catalog=catalog, keep=keep)

    monkeypatch.setattr(ArchiveReader, "_checked_member", checked_member)
    return seen


def test_a_trusted_chain_is_not_read_again(chain, reads):
    parent, inc = chain
    first = verify_archive(parent, deep=False)
    assert first.ok and first.checked_chain == identity(parent)
    reads.clear()
    rep = verify_archive(inc, deep=False, trusted_chain=first.checked_chain)
    with ArchiveReader(inc) as r:
        refs = [i for i in range(r.chunk_count) if r.entry(i).in_parent]
        own = [i for i in range(r.chunk_count) if not r.entry(i).in_parent]
    assert rep.ok and refs and own
    assert rep.trusted_chunks == len(refs) and rep.checked_chunks == rep.chunks
    assert "p.tar.gz" not in reads and sorted(reads["i.tar.gz"]) == own
    assert rep.checked_chain == []  # it did not hash the chain itself: no trust to pass on
    untrusted = verify_archive(inc, deep=False)
    assert untrusted.ok and untrusted.trusted_chunks == 0
    assert untrusted.checked_chain == identity(inc, parent)


@pytest.mark.parametrize("change", ["rewritten", "touched", "other file", "deep", "sampled"])
def test_the_chain_is_read_when_the_trust_does_not_hold(chain, reads, tmp_path, change):
    parent, inc = chain
    trusted = verify_archive(parent, deep=False).checked_chain
    kw: dict = {"deep": False}
    if change == "rewritten":  # damaged in place after that verify, at the same size
        with ArchiveReader(parent) as r:
            e = r.entry(r.chunk_count // 2)
        data = bytearray(parent.read_bytes())
        data[e.offset + e.length // 2] ^= 0xFF
        parent.write_bytes(bytes(data))
    elif change == "touched":
        os.utime(parent)
    elif change == "other file":  # the same archive, another file: its own identity
        shutil.copy2(parent, tmp_path / "copy.tar.gz")
        trusted = identity(tmp_path / "copy.tar.gz")
    elif change == "deep":
        kw = {"deep": True}
    else:
        kw = {"deep": False, "sample": 0.5, "seed": 1}
    reads.clear()
    rep = verify_archive(inc, trusted_chain=trusted, **kw)
    assert rep.trusted_chunks == 0
    if change == "rewritten":
        assert not rep.ok and "p.tar.gz: chunk" in rep.errors[0]
    else:
        assert rep.ok and reads.get("p.tar.gz") or kw["deep"]


def test_a_reference_is_still_compared_with_the_trusted_entry(chain, monkeypatch):
    """Trust skips reading the member, not locating it: every reference is resolved hop by
    hop (its entry compared with the parent's), and one that does not match still fails."""
    from dsbackup.archive.chain import ParentChain
    from dsbackup.errors import MissingParentError

    parent, inc = chain
    trusted = verify_archive(parent, deep=False).checked_chain
    located: list[int] = []
    real = ParentChain.locate

    def locate(self, i):
        located.append(i)
        if len(located) == 3:
            raise MissingParentError(f"{self.reader.path}: chunk {i}: holds other data")
        return real(self, i)

    monkeypatch.setattr(ParentChain, "locate", locate)
    rep = verify_archive(inc, deep=False, trusted_chain=trusted, threads=1)
    with ArchiveReader(inc) as r:
        refs = [i for i in range(r.chunk_count) if r.entry(i).in_parent]
    assert set(located) == set(refs)
    assert not rep.ok and "holds other data" in rep.errors[0]
    assert rep.trusted_chunks == len(refs) - 1
