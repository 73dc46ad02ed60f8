"""The automatic chunk size of a flatfs store without ``diskUsage.cache``: from the sampled
mean block size for full backups; an incremental keeps its parent's."""

from __future__ import annotations

import base64
import hashlib
import os
import random

import pytest

from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.datastores.helia import open_blockstore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def _put(uri, n: int, size: int, seed: int, helia: bool = False) -> None:
    rng = random.Random(seed)
    recs = {}
    for _ in range(n):
        v = rng.randbytes(size)
        recs[b"/" + base64.b32encode(b"\x12\x20" + hashlib.sha256(v).digest()).rstrip(b"=")] = v
    ds = open_blockstore(uri, readonly=False, sync=False) if helia else open_datastore(
        uri, sync=False)
    keys = sorted(recs)
    ds.put_many(keys, [recs[k] for k in keys])
    ds.close()


def _chunk_size(path) -> int:
    with ArchiveReader(path) as r:
        return r.manifest["settings"]["chunk_size"]


@pytest.mark.parametrize("trust", [True, False], ids=["listing", "general"])
def test_full_from_the_sample_incremental_keeps_the_parents(tmp_path, trust):
    root = tmp_path / "s"
    _put(f"flatfs:{root}", 120, 64 * 1024, 1)  # 64 KiB blocks: 16 a chunk
    os.unlink(root / "diskUsage.cache")
    mgr = BackupManager(BackupConfig(workers=1, trust_content_keys=trust))
    mgr.create_backup(f"flatfs:{root}", tmp_path / "full.tar.gz")
    assert _chunk_size(tmp_path / "full.tar.gz") == 16  # was the fallback, 1000
    _put(f"flatfs:{root}", 600, 1024, 2)  # now mostly 1 KiB: mean 11.5 KiB, 89 a chunk
    os.unlink(root / "diskUsage.cache")
    mgr.create_backup(f"flatfs:{root}", tmp_path / "inc.tar.gz", parent=tmp_path / "full.tar.gz")
    assert _chunk_size(tmp_path / "inc.tar.gz") == 16
    mgr.create_backup(f"flatfs:{root}", tmp_path / "full2.tar.gz")
    assert 60 < _chunk_size(tmp_path / "full2.tar.gz") < 120  # from a sample of 256


def test_helia_repo_full_backup(tmp_path):
    """helia: (blockstore-fs, never a diskUsage.cache) with datastore-fs: the blocks' size."""
    repo = tmp_path / "repo"
    _put(repo / "blocks", 40, 128 * 1024, 3, helia=True)  # no metadata files
    (repo / "datastore").mkdir()
    (repo / "datastore" / "version.data").write_bytes(b"1")
    assert not (repo / "blocks" / "diskUsage.cache").exists()
    BackupManager(BackupConfig(workers=1)).create_backup(f"helia:{repo}", tmp_path / "h.tar.gz")
    assert _chunk_size(tmp_path / "h.tar.gz") == 8  # 41 records, ~5.1 MiB
