"""The automatic chunk size of a ``kubo:`` repo (and ``helia:?datastore=level``): from the
blocks' mean size while the LevelDB (which cannot count its records) holds few records beside
them; the fallback 1000 when it holds many; an incremental keeps its parent's."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from helia_repo import b32, multihash

from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def _repo(tmp_path: Path, go_fixtures: Path) -> Path:
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("config", "datastore_spec", "version"):
        shutil.copy(go_fixtures / "kubo-v16-repo" / name, dst / name)
    return dst


def _put(uri: str, blocks: int, size: int, records: int, seed: int) -> None:
    """`blocks` blocks of `size` bytes and `records` small records (60-300 B)."""
    rng = random.Random(seed)
    vals = [rng.randbytes(size) for _ in range(blocks)]
    with open_datastore(uri) as ds:
        if vals:
            ds.put_many([b"/blocks/" + b32(multihash(v)).encode() for v in vals], vals)
        for i in range(0, records, 5000):
            n = min(5000, records - i)
            ds.put_many([b"/providers/%d-%s" % (seed, rng.randbytes(20).hex().encode())
                         for _ in range(n)], [rng.randbytes(rng.randint(60, 300))
                                              for _ in range(n)])


def _settings(path: Path) -> tuple[int, int]:
    with ArchiveReader(path) as r:
        return r.manifest["settings"]["chunk_size"], len(list(r.index.entries()))


@pytest.mark.parametrize("cache", [True, False], ids=["du-cache", "no-du-cache"])
def test_kubo_repo_gets_the_blocks_size(tmp_path, go_fixtures, cache):
    repo = _repo(tmp_path, go_fixtures)
    _put(f"kubo:{repo}", 100, 64 * 1024, 100, 1)  # 64 KiB blocks: 16 a chunk
    du = repo / "blocks" / "diskUsage.cache"
    assert du.is_file()
    if not cache:
        du.unlink()
    BackupManager(BackupConfig(workers=1)).create_backup(f"kubo:{repo}", tmp_path / "k.tar.gz")
    # was the fallback, 1000 (Kubo's cache counts the shard directories too: 15)
    assert _settings(tmp_path / "k.tar.gz")[0] in (15, 16)


def test_helia_level_repo_gets_the_blocks_size(tmp_path):
    repo = tmp_path / "h"
    _put(f"helia:{repo}?datastore=level", 40, 128 * 1024, 40, 2)
    BackupManager(BackupConfig(workers=1)).create_backup(f"helia:{repo}?datastore=level",
                                                         tmp_path / "h.tar.gz")
    assert _settings(tmp_path / "h.tar.gz")[0] == 8


def test_leveldb_heavy_repo_keeps_few_chunks(tmp_path, go_fixtures):
    """30,000 small records beside 20 blocks: at the blocks' size (16) they would make ~1,900
    chunks; the rule keeps the fallback 1000, so ~30 chunks plus the blocks' byte cuts."""
    repo = _repo(tmp_path, go_fixtures)
    _put(f"kubo:{repo}", 20, 64 * 1024, 30_000, 3)
    BackupManager(BackupConfig(workers=1)).create_backup(f"kubo:{repo}", tmp_path / "k.tar.gz")
    size, chunks = _settings(tmp_path / "k.tar.gz")
    assert size == 1000
    assert chunks < 30_000 / 1000 * 2 + 10


def test_incremental_keeps_the_parents_size(tmp_path, go_fixtures):
    repo = _repo(tmp_path, go_fixtures)
    uri = f"kubo:{repo}"
    _put(uri, 100, 64 * 1024, 100, 4)
    mgr = BackupManager(BackupConfig(workers=1))
    mgr.create_backup(uri, tmp_path / "full.tar.gz")
    parent = _settings(tmp_path / "full.tar.gz")[0]
    assert parent in (15, 16)
    _put(uri, 0, 0, 30_000, 5)  # now LevelDB-heavy: a full backup would take 1000
    mgr.create_backup(uri, tmp_path / "inc.tar.gz", parent=tmp_path / "full.tar.gz")
    assert _settings(tmp_path / "inc.tar.gz")[0] == parent
    mgr.create_backup(uri, tmp_path / "full2.tar.gz")
    assert _settings(tmp_path / "full2.tar.gz")[0] == 1000


def test_an_explicit_chunk_size_is_kept(tmp_path, go_fixtures):
    repo = _repo(tmp_path, go_fixtures)
    _put(f"kubo:{repo}", 30, 64 * 1024, 100, 6)
    BackupManager(BackupConfig(workers=1, chunk_size=7)).create_backup(
        f"kubo:{repo}", tmp_path / "k.tar.gz")
    assert _settings(tmp_path / "k.tar.gz")[0] == 7
    assert os.path.getsize(tmp_path / "k.tar.gz") > 0


def test_the_paged_index_estimate_counts_the_blocks(tmp_path, go_fixtures, monkeypatch):
    """paged_index=auto decides by the expected chunk count: at the blocks' size that is the
    blocks over the chunk size (~100 / 16), not the bytes over chunk_max_bytes (~3)."""
    from dsbackup.engine import full

    seen = []
    real = full.choose_page_entries
    monkeypatch.setattr(full, "choose_page_entries",
                        lambda mode, expected: seen.append(expected) or real(mode, expected))
    repo = _repo(tmp_path, go_fixtures)
    _put(f"kubo:{repo}", 100, 64 * 1024, 100, 7)
    BackupManager(BackupConfig(workers=1)).create_backup(f"kubo:{repo}", tmp_path / "k.tar.gz")
    size, chunks = _settings(tmp_path / "k.tar.gz")
    assert size in (15, 16) and seen and 100 / 16 <= seen[0] <= 100 / 15 + 0.01
    assert chunks >= 5
