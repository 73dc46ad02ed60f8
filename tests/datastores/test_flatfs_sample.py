"""The size estimate of a flatfs store without ``diskUsage.cache`` (flatfs_sample.py): a
deterministic, bounded sample of file sizes, for the shard functions and layouts in use."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shutil

import pytest
from helia_repo import make_blocks, make_helia_repo, write_blockstore

from dsbackup.datastores import flatfs_sample, open_datastore
from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.datastores.flatfs_sample import MAX_DIRS, SAMPLE_DIRS, SAMPLE_FILES, spread
from dsbackup.datastores.helia import open_blockstore
from dsbackup.engine.config import BackupConfig


def _blocks(n: int, seed: int, size=lambda r: r.randrange(100, 3000)) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    out = {}
    for _ in range(n):
        v = rng.randbytes(size(rng))
        out[b"/" + base64.b32encode(b"\x12\x20" + hashlib.sha256(v).digest()).rstrip(b"=")] = v
    return out


def _store(path, blocks: dict[bytes, bytes], shard: str = "next-to-last/2",
           order: int = 1) -> None:
    ds = FlatfsDatastore(path, shard=shard, sync=False)
    keys = sorted(blocks)[::order]
    ds.put_many(keys, [blocks[k] for k in keys])
    ds.close()
    os.unlink(path / "diskUsage.cache")


def test_spread_visits_each_index_once_evenly_first():
    for n in (1, 2, 15, 16, 17, 100, 1024):
        got = list(spread(n))
        assert sorted(got) == list(range(n))
    assert list(spread(1024))[:SAMPLE_DIRS] == [k * 64 for k in range(SAMPLE_DIRS)]
    assert list(spread(1024))[SAMPLE_DIRS:2 * SAMPLE_DIRS] == [32 + k * 64
                                                               for k in range(SAMPLE_DIRS)]


@pytest.mark.parametrize("shard", ["next-to-last/2", "prefix/2", "suffix/1"])
def test_mean_of_a_store_without_cache(tmp_path, shard):
    blocks = _blocks(1500, 1, size=lambda r: 4096)
    _store(tmp_path / "s", blocks, shard)
    ds = open_datastore(f"flatfs:{tmp_path / 's'}", readonly=True)
    count, size = ds.approx_count(), ds.approx_size()
    ds.close()
    assert (count, size) == (1500, 1500 * 4096)
    assert BackupConfig().resolve_chunk_size(count, size) == 256  # 1 MiB / 4 KiB
    # on main: approx_size None, so the fallback 1000


@pytest.mark.parametrize("shard", ["next-to-last/1", "next-to-last/2"])
def test_sample_is_bounded(tmp_path, monkeypatch, shard):
    """32 shards of ~94 files: 16 files in each of 16 shards; ~900 shards of ~3 files: all
    those of 64 shards."""
    blocks = _blocks(3000, 2)
    _store(tmp_path / "s", blocks, shard)
    calls = {"lstat": 0, "dirs": 0}
    real_lstat = os.lstat

    def lstat(p, *a, **k):
        calls["lstat"] += 1
        return real_lstat(p, *a, **k)

    ds = FlatfsDatastore(tmp_path / "s", readonly=True)
    real_names = ds._lister.own_names

    def own_names(*a):
        names = real_names(*a)
        calls["dirs"] += bool(names)
        return names

    monkeypatch.setattr(flatfs_sample.os, "lstat", lstat)
    monkeypatch.setattr(ds._lister, "own_names", own_names)
    size = ds.approx_size()  # no approx_count before: it counts
    if shard.endswith("/1"):
        assert calls["lstat"] == SAMPLE_FILES and calls["dirs"] == SAMPLE_DIRS
    else:
        assert calls["dirs"] == MAX_DIRS and 128 < calls["lstat"] < SAMPLE_FILES
    true_mean = sum(map(len, blocks.values())) / len(blocks)
    assert abs(size / 3000 - true_mean) < 0.1 * true_mean
    ds.close()


def test_a_large_shard_directory_is_read_in_part(tmp_path, monkeypatch):
    """prefix/1: everything in a few directories; each is read up to DIR_ENTRIES entries."""
    blocks = _blocks(1200, 6, size=lambda r: 2048)
    _store(tmp_path / "s", blocks, "prefix/1")
    seen = []
    ds = FlatfsDatastore(tmp_path / "s", readonly=True)
    real_names = ds._lister.own_names
    monkeypatch.setattr(ds._lister, "own_names", lambda n, s: seen.append(len(n)) or
                        real_names(n, s))
    monkeypatch.setattr(flatfs_sample, "DIR_ENTRIES", 50)
    assert ds.approx_count() == 1200 and ds.approx_size() == 1200 * 2048
    assert seen and max(seen) <= 50
    ds.close()


def test_same_files_same_estimate_whatever_the_write_order(tmp_path):
    blocks = _blocks(2500, 3, size=lambda r: int(r.paretovariate(1.2) * 300))
    _store(tmp_path / "a", blocks, order=1)
    _store(tmp_path / "b", blocks, order=-1)  # other readdir orders
    got = []
    for name in ("a", "b", "a"):
        ds = FlatfsDatastore(tmp_path / name, readonly=True)
        got.append((ds.approx_count(), ds.approx_size()))
        ds.close()
    assert got[0] == got[1] == got[2]


def test_empty_shards_temp_and_foreign_files_are_passed_by(tmp_path):
    """Few files, most shard directories empty (go-ds-flatfs never removes one), temp files
    of interrupted writes and misplaced names: the mean is the blocks' own."""
    blocks = _blocks(20, 4)
    _store(tmp_path / "s", blocks)
    root = tmp_path / "s"
    for i in range(200):
        (root / f"{i:02X}"[:2]).mkdir(exist_ok=True)
    big = b"x" * 10**6
    (root / ".temp").mkdir(exist_ok=True)
    (root / ".temp" / "put-123").write_bytes(big)
    shard = next(p for p in root.iterdir() if p.is_dir() and any(p.iterdir()))
    (shard / "put-456").write_bytes(big)  # old go-ds-flatfs temp file
    (shard / ".x.data.tmp").write_bytes(big)  # steno's
    (shard / "AAAAAAAAAAAA.data").write_bytes(big)  # not in its shard
    os.symlink("/dev/zero", shard / ("B" * 10 + shard.name + "Q.data"))  # not a regular file
    ds = FlatfsDatastore(root, readonly=True)
    count, size = ds.approx_count(), ds.approx_size()
    ds.close()
    assert count == 22  # the misplaced file and the link counted: an estimate
    assert size == round(sum(map(len, blocks.values())) / 20 * count)


def test_no_file_to_sample(tmp_path):
    ds = FlatfsDatastore(tmp_path / "s")
    assert ds.approx_size() == 0  # a new store: no shard directory
    (tmp_path / "s" / "AB").mkdir()
    assert ds.approx_count() == 0 and ds.approx_size() == 0
    ds.close()


def test_the_cache_wins_when_present(tmp_path):
    blocks = _blocks(50, 5)
    _store(tmp_path / "s", blocks)
    (tmp_path / "s" / "diskUsage.cache").write_bytes(b'{"diskUsage":12345,"accuracy":"x"}\n')
    ds = FlatfsDatastore(tmp_path / "s", readonly=True)
    assert ds.approx_size() == 12345
    ds.close()


def test_helia_blockstore_fs(tmp_path, go_fixtures):
    """Helia's blockstore-fs (suffix/2, names with the multibase B, no metadata files):
    the fixture written by js-stores, and a larger one with steno temp files."""
    src = go_fixtures / "helia-js-stores" / "fs" / "blocks"
    shutil.copytree(src, tmp_path / "fx")
    sizes = [p.stat().st_size for p in (tmp_path / "fx").rglob("*.data")]
    ds = open_blockstore(tmp_path / "fx", readonly=True)
    assert (ds.approx_count(), ds.approx_size()) == (len(sizes), sum(sizes))
    ds.close()
    blocks = make_blocks(400, seed=9)
    write_blockstore(tmp_path / "b", blocks)
    d = next((tmp_path / "b").iterdir())
    (d / f".B{'A' * 50}{d.name}.data.tmp").write_bytes(b"x" * 10**6)
    ds = open_datastore(f"flatfs:{tmp_path / 'b'}?shard=suffix/2", readonly=True)
    count, size = ds.approx_count(), ds.approx_size()
    ds.close()
    mean = sum(map(len, blocks.values())) / len(blocks)
    assert count == 400 and abs(size / count - mean) < 0.3 * mean  # a wide mix of sizes


def test_helia_repo_mount_has_a_size(tmp_path):
    """helia: with datastore-fs: the blockstore's estimate plus the datastore's files."""
    repo = tmp_path / "repo"
    blocks, records = make_helia_repo(repo, blocks=30, level=False)
    ds = open_datastore(f"helia:{repo}", readonly=True)
    count, size = ds.approx_count(), ds.approx_size()
    ds.close()
    assert count == len(blocks) + len(records)
    assert size == sum(map(len, blocks.values())) + sum(map(len, records.values()))
