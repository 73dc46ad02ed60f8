"""The post-write check of an incremental (engine/incremental.py _check_own) still catches a
reference that does not match its parent, now that references are checked in bulk
(archive/refcheck.py)."""

from __future__ import annotations

import random

import pytest

from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import MissingParentError


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
                    from dataclasses import replace
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
