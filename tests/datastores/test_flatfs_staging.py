"""flatfs staged writes (stage_many in several threads, commit_staged in order): what a restore
into flatfs or a Kubo repo writes with (engine/restore_staged.py)."""

from __future__ import annotations

import os
import random
import shutil
import string
import threading
from pathlib import Path

import pytest

from dsbackup.datastores import flatfs as flatfs_mod
from dsbackup.datastores import open_datastore
from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.errors import InvalidKey, NotFound

B32 = string.ascii_uppercase + "234567"


def _keys(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return sorted({("/CIQ" + "".join(rnd.choice(B32) for _ in range(52))).encode()
                   for _ in range(n)})


def _files(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root: its mode and, for a file, its bytes."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = (
            p.stat().st_mode & 0o7777, None if p.is_dir() else p.read_bytes())
    return out


def _stage_in_threads(ds, keys: list[bytes], values: list[bytes], parts: int = 4) -> list:
    """stage_many of `parts` slices of the records, each in a thread of its own."""
    cut = [len(keys) * i // parts for i in range(parts + 1)]
    staged: list = [None] * parts

    def one(i: int) -> None:
        staged[i] = ds.stage_many(keys[cut[i]:cut[i + 1]], values[cut[i]:cut[i + 1]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return staged


@pytest.mark.parametrize("layout", ["go", "helia"])
def test_staged_files_are_records_only_once_committed_and_match_put_many(tmp_path, layout):
    """Staged in four threads: no record exists before the commit; after it (and close) the
    directory is the one put_many writes: same files, bytes and modes, the same
    diskUsage.cache, and no temp file or per-thread temp directory left."""
    keys = _keys(120)
    values = [os.urandom(random.Random(k).randint(0, 5000)) for k in keys]
    uri = "flatfs:{}" if layout == "go" else "flatfs:{}?shard=suffix/2&metadata=0"
    ref = open_datastore(uri.format(tmp_path / "ref"), readonly=False)
    ref.put_many(keys, values)
    ref.close()
    assert (tmp_path / "ref" / "SHARDING").exists() == (layout == "go")
    ds = open_datastore(uri.format(tmp_path / "st"), readonly=False)
    staged = _stage_in_threads(ds, keys, values)
    assert sum(len(s) for s in staged) == len(keys)
    assert ds.is_empty()
    with pytest.raises(NotFound):
        ds.get(keys[0])
    ds.commit_staged(staged)
    assert [ds.get(k) for k in keys] == values
    ds.close()
    assert _files(tmp_path / "st") == _files(tmp_path / "ref")
    if layout == "go":
        assert os.listdir(tmp_path / "st" / ".temp") == []


def test_commit_fsyncs_temp_files_before_renames_then_directories_and_root(tmp_path,
                                                                          monkeypatch):
    """Staging fsyncs nothing (a new shard directory's root fsync is left to the commit);
    the commit fsyncs every temp file before the first rename, then every directory a file
    was renamed into and the root, which new shard directories were made in."""
    ds = FlatfsDatastore(tmp_path / "f")
    ds.put(b"/CIQFIRST", b"makes the store's own files")
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a, b):
        events.append(("rename", os.fsdecode(b)))
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(flatfs_mod.os, "rename", rename)
    keys = _keys(40, seed=5)
    staged = _stage_in_threads(ds, keys, [k * 10 for k in keys])
    assert events == []
    ds.commit_staged(staged)
    monkeypatch.undo()
    ds.close()
    kinds = [k for k, _ in events]
    first_rename = kinds.index("rename")
    synced_before = {p for k, p in events[:first_rename] if k == "fsync"}
    renamed = [p for k, p in events if k == "rename"]
    assert len(renamed) == 40 and len(synced_before) == 40
    assert all("/.temp/" in p for p in synced_before)
    dirs_after = {p for k, p in events[first_rename:] if k == "fsync"}
    assert {os.path.dirname(p) for p in renamed} | {str(tmp_path / "f")} <= dirs_after


def test_discard_staged_removes_what_was_not_committed(tmp_path):
    """A restore that stops: the temp files staged and not committed go (go layout: in
    .temp/; Helia layout: .temp-* files in the shard directories)."""
    for uri in (f"flatfs:{tmp_path / 'go'}",
                f"flatfs:{tmp_path / 'h'}?shard=suffix/2&metadata=0"):
        ds = open_datastore(uri, readonly=False)
        keys = _keys(30, seed=7)
        first = ds.stage_many(keys[:10], [b"a"] * 10)
        ds.stage_many(keys[10:], [b"b"] * 20)
        ds.commit_staged([first])
        ds.discard_staged()
        ds.close()
        root = Path(ds.path)
        left = [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".data")
                and p.name not in ("SHARDING", "_README", "diskUsage.cache")]
        assert left == []
        assert sorted(p.name[:-5] for p in root.rglob("*.data")) == \
            sorted(k[1:].decode() for k in keys[:10])


def test_stage_many_checks_every_key_before_writing(tmp_path):
    ds = FlatfsDatastore(tmp_path / "f")
    with pytest.raises(InvalidKey):
        ds.stage_many([b"/CIQA", b"/lower"], [b"1", b"2"])
    assert not (tmp_path / "f" / ".temp").exists() or \
        list((tmp_path / "f" / ".temp").rglob("*.*")) == []
    assert ds.is_empty()
    ds.close()


def test_a_kubo_repo_stages_its_blocks_and_holds_the_other_records(tmp_path, go_fixtures):
    repo = tmp_path / "repo"
    shutil.copytree(go_fixtures / "kubo-v16-repo", repo)
    for p in [repo, *repo.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    with open_datastore(f"kubo:{repo}") as ds:
        assert ds.stages_files
        keys = [b"/blocks/CIQNEWBLOCKA", b"/blocks/CIQNEWBLOCKB", b"/local/filesroot"]
        staged = ds.stage_many(keys, [b"a", b"b", b"root"])
        assert not (repo / "blocks" / "CK" / "CIQNEWBLOCKA.data").exists()
        assert not ds.has(b"/local/filesroot")
        ds.commit_staged([staged])
        assert [ds.get(k) for k in keys] == [b"a", b"b", b"root"]
    assert (repo / "blocks" / "CK" / "CIQNEWBLOCKA.data").read_bytes() == b"a"


def test_a_new_stores_metadata_files_are_durable(tmp_path, monkeypatch):
    """SHARDING and _README are fsynced when a store is made (an empty SHARDING after a
    crash: go-ds-flatfs refuses the store), then the root; diskUsage.cache's rename is
    followed by a root fsync (not the old count after a crash). sync=0 fsyncs nothing."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    root = tmp_path / "f"
    ds = FlatfsDatastore(root)
    assert synced == [str(root / "SHARDING"), str(root / "_README"), str(root)]
    ds.put(b"/CIQA", b"x")
    synced.clear()
    ds.close()
    assert synced[-1] == str(root) and synced[-2].startswith(str(root / ".temp" / "du-"))
    synced.clear()
    FlatfsDatastore(tmp_path / "nosync", sync=False).close()
    assert synced == []


@pytest.mark.parametrize("layout", ["go", "helia"])
def test_a_shard_directory_found_made_gets_the_root_fsynced(tmp_path, monkeypatch, layout):
    """A shard directory that exists when a record is staged into it was made by a killed
    restore (its entry in the root never fsynced: a power loss after the resumed restore said
    OK could take it with every record in it) or by another thread still between its mkdir
    and setting the root's flag; the commit fsyncs the root for it. Without, only a
    directory this thread made did (hostile review)."""
    uri = "flatfs:{}" if layout == "go" else "flatfs:{}?shard=suffix/2&metadata=0"
    ds = open_datastore(uri.format(tmp_path / "f"), readonly=False)
    ds.put(b"/CIQFIRST", b"makes the store's own files")
    keys = _keys(20, seed=7)
    for k in keys:  # what the killed run made
        os.makedirs(os.path.join(ds._root, ds._dir_of(ds.name_prefix + k[1:])),
                    exist_ok=True)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    staged = ds.stage_many(keys, [k * 3 for k in keys])
    ds.commit_staged([staged])
    monkeypatch.undo()
    ds.close()
    assert str(tmp_path / "f") in synced
