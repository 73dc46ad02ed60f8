"""flatfs: byte-compatibility with go-ds-flatfs, read-only safety, Helia layout, listing.

The expected layouts are written here from go-ds-flatfs's documented rules (SHARDING
format, shard functions with '_' padding, <shard>/<NAME>.data, _README text, diskUsage.cache
JSON), and checked against the directory Kubo wrote (fixtures/kubo-v16-repo/blocks)."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup.datastores import open_datastore
from dsbackup.datastores.base import Checkable, DiskUsage, Scrubbable
from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.datastores.flatfs_layout import ShardFunc, encode_disk_usage
from dsbackup.errors import DatastoreError, InvalidKey, NotFound

B32 = string.ascii_uppercase + "234567"
FIXTURE_BLOCK = "CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y"


def _names(n: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    return ["CIQ" + "".join(rnd.choice(B32) for _ in range(52)) for _ in range(n)]


def _expected_shard(kind: str, n: int, name: str) -> str:
    """go-ds-flatfs's shard functions, restated: pad with '_' then cut."""
    if kind == "prefix":
        return (name + "_" * n)[:n]
    if kind == "suffix":
        return ("_" * n + name)[-n:]
    padded = "_" * (n + 1) + name
    return padded[len(padded) - n - 1:len(padded) - 1]


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else p.read_bytes()
    return out


def _walk_usage(root: Path) -> int:
    """The initial count go-ds-flatfs makes on open when there is no cache: the root and
    every file and directory below it."""
    total = root.lstat().st_size
    for p in root.rglob("*"):
        if p.name != "diskUsage.cache":
            total += p.lstat().st_size
    return total


def _go_disk_usage(initial: int, root: Path, tmp: Path) -> int:
    """go-ds-flatfs's running count: the initial walk, plus each shard directory's size when
    it was created (empty), plus the current size of every .data file."""
    empty = tmp / "empty-dir-probe"
    empty.mkdir(exist_ok=True)
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    files = sum(f.stat().st_size for d in dirs for f in d.glob("*.data"))
    return initial + len(dirs) * empty.stat().st_size + files


def test_shard_functions():
    vectors = [
        ("next-to-last", 2, "CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y", "X3"),
        ("next-to-last", 2, "AFKREIA22FLID5AJ2KU7URG47MDLROZIH6YF2KALU2PWEFPVI37YLKRSCA", "SC"),
        ("next-to-last", 2, "A", "__"), ("next-to-last", 2, "AB", "_A"),
        ("next-to-last", 3, "ABCDE", "BCD"), ("prefix", 2, "ABCD", "AB"),
        ("prefix", 3, "AB", "AB_"), ("suffix", 2, "ABCD", "CD"), ("suffix", 3, "AB", "_AB"),
    ]
    for kind, n, name, want in vectors:
        assert ShardFunc(kind, n).dir_of(name.encode()) == want.encode()
        assert _expected_shard(kind, n, name) == want
    assert str(ShardFunc.parse("/repo/flatfs/shard/v1/next-to-last/2\n")) == \
        "/repo/flatfs/shard/v1/next-to-last/2"
    assert ShardFunc.parse("prefix/4") == ShardFunc("prefix", 4)
    for bad in ("/repo/flatfs/shard/v2/prefix/2", "nope/2", "prefix/x", "prefix", "prefix/0"):
        with pytest.raises(DatastoreError):
            ShardFunc.parse(bad)


@pytest.mark.parametrize("shard", ["next-to-last/2", "prefix/3", "suffix/1"])
def test_directory_identical_to_go_ds_flatfs(tmp_path, go_fixtures, shard):
    kind, n = shard.split("/")
    root = tmp_path / "blocks"
    data = {name: os.urandom(random.Random(name).randint(0, 3000)) for name in _names(60)}
    data["A"] = b"short name, padded shard"
    data[FIXTURE_BLOCK] = b"\n\x02\x08\x01"
    default = shard == "next-to-last/2"
    ds = FlatfsDatastore(root, shard=None if default else shard, sync=False)
    assert not (root / ".temp").exists()  # made with the first write, counted then
    probe = tmp_path / "temp-size-probe"
    probe.mkdir()
    initial = _walk_usage(root) + probe.stat().st_size
    items = list(data.items())
    for name, value in items[:30]:
        ds.put("/" + name, value)
    ds.put_many([f"/{k}".encode() for k, _ in items[30:]], [v for _, v in items[30:]])
    ds.put("/A", b"overwritten")
    data["A"] = b"overwritten"
    ds.close()

    expected: dict[str, bytes | str] = {
        "SHARDING": f"/repo/flatfs/shard/v1/{kind}/{n}\n".encode(),
        ".temp": "<dir>",
    }
    if default:
        expected["_README"] = (go_fixtures / "kubo-v16-repo" / "blocks" / "_README").read_bytes()
    for name, value in data.items():
        d = _expected_shard(kind, int(n), name)
        expected[d] = "<dir>"
        expected[f"{d}/{name}.data"] = value
    expected["diskUsage.cache"] = (
        b'{"diskUsage":%d,"accuracy":"initial-exact"}\n'
        % _go_disk_usage(initial, root, tmp_path))
    assert _tree(root) == expected
    if default:
        assert (root / "_README").stat().st_mode & 0o777 == 0o444
    # the block Kubo wrote sits at the same relative path with the same bytes
    fixture = go_fixtures / "kubo-v16-repo" / "blocks"
    if default:
        rel = f"X3/{FIXTURE_BLOCK}.data"
        assert (root / rel).read_bytes() == (fixture / rel).read_bytes()
        assert (root / "SHARDING").read_bytes() == (fixture / "SHARDING").read_bytes()


def test_modes_are_go_ds_flatfs_modes(tmp_path):
    """The modes go-ds-flatfs (ipfs/go-ds-flatfs flatfs.go, shard.go, util_unix.go) gives:
    a value is written to ``os.CreateTemp(".temp", "temp-")`` (0600) and renamed as it is,
    so Kubo's block files are 0600, and so is ``diskUsage.cache`` (written the same way);
    ``SHARDING`` is ``OpenFile(..., 0666)``, ``_README`` 0444, shard dirs and ``.temp``
    ``Mkdir(..., 0755)``; the umask applies to each. Under umask 022, and under 077."""
    for umask, dirs, sharding in ((0o022, 0o755, 0o644), (0o077, 0o700, 0o600)):
        old = os.umask(umask)
        try:
            root = tmp_path / f"blocks{umask:o}"
            ds = FlatfsDatastore(root, sync=False)
            ds.put("/" + FIXTURE_BLOCK, b"\n\x02\x08\x01")
            ds.put_many([b"/CIQA", b"/CIQB"], [b"a", b"b"])
            ds.close()
        finally:
            os.umask(old)
        modes = {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*")}
        assert modes == {
            "SHARDING": sharding, "_README": 0o444 & ~umask, "diskUsage.cache": 0o600,
            ".temp": dirs, "X3": dirs, "X3/" + FIXTURE_BLOCK + ".data": 0o600,
            "IQ": dirs, "IQ/CIQA.data": 0o600, "IQ/CIQB.data": 0o600}


def test_disk_usage_cache_format_matches_kubo(go_fixtures):
    raw = (go_fixtures / "kubo-v16-repo" / "blocks" / "diskUsage.cache").read_bytes()
    doc = json.loads(raw)
    assert encode_disk_usage(doc["diskUsage"], doc["accuracy"]) == raw


def test_disk_usage_tracks_puts_deletes_overwrites(tmp_path):
    root = tmp_path / "b"
    ds = FlatfsDatastore(root, sync=False)
    probe = tmp_path / "temp-size-probe"  # .temp/ is made (and counted) at the first write
    probe.mkdir()
    initial = _walk_usage(root) + probe.stat().st_size
    names = _names(40, seed=3)
    for i, name in enumerate(names):
        ds.put("/" + name, b"x" * i)
    for name in names[:10]:
        ds.delete("/" + name)
    ds.put("/" + names[20], b"y" * 5000)
    ds.sync()
    assert ds.disk_usage() == _go_disk_usage(initial, root, tmp_path)
    assert json.loads((root / "diskUsage.cache").read_text())["diskUsage"] == ds.disk_usage()
    assert isinstance(ds, DiskUsage) and isinstance(ds, Checkable) and isinstance(ds, Scrubbable)
    ds.close()
    again = FlatfsDatastore(root, sync=False)  # reads the cache instead of walking
    assert again.disk_usage() == _go_disk_usage(initial, root, tmp_path)
    again.close()


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size, st.st_mode,
                                               st.st_ino)
    return out


def test_readonly_open_and_scan_change_nothing(tmp_path, go_fixtures):
    root = tmp_path / "blocks"
    shutil.copytree(go_fixtures / "kubo-v16-repo" / "blocks", root)
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    w = FlatfsDatastore(root, sync=False)
    for name in _names(50, seed=5):
        w.put("/" + name, os.urandom(100))
    w.close()
    (root / ".temp" / "temp-stale").write_bytes(b"left by a crashed writer")
    (root / "diskUsage.cache").unlink()
    before = _snapshot(root)
    ds = open_datastore(str(root), readonly=True)
    got = [k for ks, _ in ds.scan_batches(max_records=7) for k in ks]
    assert len(got) == 51 and got == sorted(got)
    list(ds.scan_key_sizes())
    assert ds.get("/" + FIXTURE_BLOCK) == b"\n\x02\x08\x01"
    ds.approx_count(), ds.approx_size(), ds.first_key(), ds.last_key(), ds.is_empty()
    ds.check()
    ds.scrub()
    ds.close()
    assert _snapshot(root) == before
    assert (root / ".temp" / "temp-stale").exists()
    assert not (root / "diskUsage.cache").exists()


def test_readonly_refuses_writes_and_missing_dirs(tmp_path):
    with pytest.raises(DatastoreError):
        FlatfsDatastore(tmp_path / "missing", readonly=True)
    FlatfsDatastore(tmp_path / "b", sync=False).close()
    ro = FlatfsDatastore(tmp_path / "b", readonly=True)
    with pytest.raises(DatastoreError, match="read-only"):
        ro.put("/ABC", b"1")


def test_helia_directory_without_sharding(tmp_path):
    root = tmp_path / "helia"
    names = ["B" + n for n in _names(20, seed=7)]
    for name in names:  # what Helia's blockstore-fs writes: last two characters, no SHARDING
        d = root / _expected_shard("suffix", 2, name)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.data").write_bytes(name.encode())
    with pytest.raises(DatastoreError, match="helia:REPO"):
        open_datastore(f"flatfs:{root}", readonly=True)
    ds = open_datastore(f"flatfs:{root}?shard=suffix/2", readonly=True)
    assert [k for ks, _ in ds.scan_batches() for k in ks] == sorted(
        f"/{n}".encode() for n in names)
    assert ds.audit_files().count == 0
    reopened = open_datastore(ds.uri, readonly=True)  # the uri carries the shard function
    assert reopened.get("/" + names[0]) == names[0].encode()
    w = FlatfsDatastore(root, shard="suffix/2", sync=False)
    w.put("/BCIQNEW", b"new")
    w.close()
    assert sorted(p.name for p in root.iterdir() if not p.is_dir()) == []
    assert not (root / ".temp").exists()
    assert reopened.get("/BCIQNEW") == b"new"
    assert (root / "EW" / "BCIQNEW.data").stat().st_mode & 0o777 == 0o666 & ~_umask()
    wrong = open_datastore(f"flatfs:{root}?shard=next-to-last/2", readonly=True)
    audit = wrong.audit_files()
    assert audit.count >= 15 and "helia:REPO" in audit.hint and "suffix/2" in audit.hint


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_writable_open_writes_nothing_until_the_first_write(tmp_path):
    root = tmp_path / "b"
    root.mkdir()
    ds = FlatfsDatastore(root, sync=False)  # an existing, empty directory
    assert list(ds.scan_batches()) == [] and ds.is_empty()
    ds.close()
    assert list(root.iterdir()) == []
    ds = FlatfsDatastore(root, sync=False)
    ds.put("/CIQA", b"x")
    ds.close()
    assert {p.name for p in root.iterdir()} >= {"SHARDING", "_README", ".temp",
                                                 "diskUsage.cache"}
    new = FlatfsDatastore(tmp_path / "new", sync=False)  # made by us: SHARDING at once
    new.close()
    assert (tmp_path / "new" / "SHARDING").is_file()


def test_shard_mismatch_is_an_error(tmp_path):
    FlatfsDatastore(tmp_path / "b", sync=False).close()
    with pytest.raises(DatastoreError, match="does not match"):
        FlatfsDatastore(tmp_path / "b", shard="prefix/2")
    FlatfsDatastore(tmp_path / "b", shard="/repo/flatfs/shard/v1/next-to-last/2").close()


def test_key_charset(tmp_path):
    ds = FlatfsDatastore(tmp_path / "b", sync=False)
    for bad in ["/lower", "/A/B", "/A.B", "/", "/A B", "/\xe9"]:
        with pytest.raises(InvalidKey, match="0-9, A-Z"):
            ds.put(bad, b"x")
        with pytest.raises(NotFound):
            ds.get(bad)
        assert not ds.has(bad)
        ds.delete(bad)
    with pytest.raises(InvalidKey):
        ds.put_many([b"/OK", b"/bad"], [b"1", b"2"])
    ds.put("/AZ09+-_=", b"ok")
    assert ds.get("/AZ09+-_=") == b"ok"


def test_stray_files_are_not_listed(tmp_path):
    root = tmp_path / "b"
    ds = FlatfsDatastore(root, sync=False)
    ds.put("/CIQAAAB", b"1")
    shard = _expected_shard("next-to-last", 2, "CIQAAAB")
    (root / shard / "notes.txt").write_bytes(b"x")
    (root / shard / "lower.data").write_bytes(b"x")
    (root / "ZZ").mkdir()
    (root / "ZZ" / "CIQAAAC.data").write_bytes(b"wrong shard")  # belongs in AA
    (root / ".temp" / "temp-1").write_bytes(b"partial")
    assert [k for ks, _ in ds.scan_batches() for k in ks] == [b"/CIQAAAB"]
    with pytest.raises(DatastoreError, match="belongs in shard AA"):
        ds.check()


def test_audit_accounts_for_every_file(tmp_path):
    root = tmp_path / "b"
    ds = FlatfsDatastore(root, sync=False)
    ds.put_many([b"/A", b"/CIQAAAB", b"/CIQAAAC"], [b"short, padded", b"1", b"2"])
    assert ds.audit_files().count == 0  # "A" lives in a '_'-padded shard: still in place
    shard = _expected_shard("next-to-last", 2, "CIQAAAB")
    (root / shard / "notes.txt").write_bytes(b"x")
    (root / shard / ".temp-123").write_bytes(b"stray temp file")
    (root / shard / "nested").mkdir()
    (root / shard / "nested" / "CIQAAAD.data").write_bytes(b"x")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "f").write_bytes(b"x")
    (root / "stray-at-root").write_bytes(b"x")
    (root / "ZZ").mkdir()
    (root / "ZZ" / "CIQAAAZZ.data").write_bytes(b"x")  # belongs in AZ
    (root / "link").symlink_to(root / shard)
    (root / ".temp" / "temp-9").write_bytes(b"go-ds-flatfs's own working file")
    audit = ds.audit_files()
    assert audit.count == 7
    assert len(audit.examples) == 5 and all(isinstance(e, str) for e in audit.examples)
    assert "7 files do not belong" in audit.message(str(root))


def test_audit_hints_for_a_kubo_blockstore_opened_as_helia(tmp_path):
    from dsbackup.datastores.helia import open_blockstore

    root = tmp_path / "blocks"
    kubo = FlatfsDatastore(root, sync=False)
    kubo.put_many([f"/{n}".encode() for n in _names(30)], [b"x"] * 30)
    kubo.close()
    for f in ("SHARDING", "_README", "diskUsage.cache"):
        (root / f).unlink()
    shutil.rmtree(root / ".temp")
    audit = open_blockstore(root, readonly=True).audit_files()
    assert audit.count == 30 and "kubo:REPO" in audit.hint and "next-to-last/2" in audit.hint


def test_windowed_listing_keeps_global_order(tmp_path):
    root = tmp_path / "b"
    ds = FlatfsDatastore(root, sync=False, max_names=25)
    names = _names(400, seed=11)
    ds.put_many([f"/{n}".encode() for n in names], [n.encode() for n in names])
    want = sorted(f"/{n}".encode() for n in names)
    got = [(k, v) for ks, vs in ds.scan_batches(max_records=33) for k, v in zip(ks, vs)]
    assert [k for k, _ in got] == want
    assert all(v == k[1:] for k, v in got)
    lo, hi = want[100], want[300]
    assert [k for ks, _ in ds.scan_key_sizes(lo, hi) for k in ks] == want[100:300]
    pre = FlatfsDatastore(tmp_path / "p", shard="prefix/1", sync=False, max_names=5)
    pre.put_many(want, [b"v"] * len(want))
    assert [k for ks, _ in pre.scan_batches() for k in ks] == want
    cuts = ds.split_points(4)
    assert len(cuts) == 3 and cuts == sorted(cuts)


def test_scan_in_another_process_sees_same_bytes(tmp_path):
    root = tmp_path / "b"
    ds = FlatfsDatastore(root, sync=False)
    names = _names(30, seed=13)
    ds.put_many([f"/{n}".encode() for n in names], [n.encode() * 3 for n in names])
    code = ("import sys, hashlib; from dsbackup.datastores import open_datastore\n"
            "ds = open_datastore(sys.argv[1], readonly=True)\n"
            "h = hashlib.sha256()\n"
            "for ks, vs in ds.scan_batches():\n"
            "    [h.update(k + v) for k, v in zip(ks, vs)]\n"
            "print(h.hexdigest())\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    out = subprocess.run([sys.executable, "-c", code, ds.uri], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    import hashlib

    h = hashlib.sha256()
    for ks, vs in ds.scan_batches():
        for k, v in zip(ks, vs):
            h.update(k + v)
    assert out == h.hexdigest()


def test_put_many_syncs_every_temp_file_before_any_rename_then_the_dirs(tmp_path, monkeypatch):
    """A batch's temp files are fsynced (by several threads) before the first is renamed into
    place, and every directory a file was renamed into is fsynced after the renames."""
    from dsbackup.datastores import flatfs as flatfs_mod

    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a, b):
        events.append(("rename", os.fsdecode(b)))
        real_rename(a, b)

    ds = open_datastore(f"flatfs:{tmp_path / 'f'}", readonly=False)
    try:
        ds.put(b"/" + _names(1, seed=9)[0].encode(), b"first")  # creates the store's files
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(flatfs_mod.os, "rename", rename)
        names = _names(40, seed=5)
        ds.put_many([b"/" + n.encode() for n in names], [n.encode() * 100 for n in names])
        monkeypatch.undo()
        assert all(ds.get(b"/" + n.encode()) == n.encode() * 100 for n in names)
    finally:
        ds.close()
    kinds = [k for k, _ in events]
    first_rename = kinds.index("rename")
    synced_before = {p for k, p in events[:first_rename]
                     if k == "fsync" and os.path.basename(p).startswith("temp-")}
    renamed = [p for k, p in events if k == "rename"]
    assert len(renamed) == 40 and len(synced_before) == 40
    dirs_after = {p for k, p in events[first_rename:] if k == "fsync"}
    assert {os.path.dirname(p) for p in renamed} <= dirs_after


def test_old_go_ds_flatfs_temp_files_are_not_foreign(tmp_path, go_fixtures):
    """go-ds-flatfs before 2020 (ipfs/go-ds-flatfs flatfs.go before 5b09ebf, "put all
    temporary files in the same directory") wrote each value to ``ioutil.TempFile(<shard
    dir>, "put-")`` and the disk usage to ``ioutil.TempFile(<root>, "du-")`` (prefix plus
    decimal digits) and never removed them after a crash; its walk ignores them (decode:
    "We expect random files like put-"). An old Kubo repo still holds them: they are the
    writer's temp files (``temp_files``), not foreign files failing the backup."""
    root = tmp_path / "blocks"
    shutil.copytree(go_fixtures / "kubo-v16-repo" / "blocks", root)
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    (root / "X3" / "put-539161034").write_bytes(b"\n\x02")  # a value cut short
    (root / "du-812447236").write_bytes(b'{"diskUsage":1')
    ds = FlatfsDatastore(root, readonly=True)
    audit = ds.audit_files()
    assert (audit.count, audit.temp_files) == (0, 2)
    assert [k for ks, _ in ds.scan_batches() for k in ks] == [f"/{FIXTURE_BLOCK}".encode()]
    (root / "X3" / "put-x1").write_bytes(b"")  # not Go's TempFile name
    (root / "X3" / f".B{FIXTURE_BLOCK}.data.tmp").write_bytes(b"")  # Helia's, not Kubo's
    (root / "du-1.json").write_bytes(b"")
    audit = ds.audit_files()
    assert (audit.count, audit.temp_files) == (3, 2)
    assert sorted(audit.examples) == ["X3/.B" + FIXTURE_BLOCK + ".data.tmp", "X3/put-x1",
                                      "du-1.json"]
