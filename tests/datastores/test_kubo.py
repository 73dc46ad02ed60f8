"""kubo: the fixture repo written by Kubo opens as one datastore; a held repo.lock is
refused with exit code 4."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsbackup.datastores import Query, open_datastore
from dsbackup.datastores.kubo import KuboDatastore
from dsbackup.errors import EXIT_LOCKED, DatastoreError, LockedError

BLOCK_KEY = b"/blocks/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y"
LEVELDB_KEYS = [
    b"/F5UXA3TTF4ACICABCIQGFUISDF6U6LB27EPGJNZUTGVSXOBFLOMQMRXGAO7JVMBHNBTQW2A",
    b"/ipns/AASAQAISEBRNCEQZPVHSYOXZDZSLONEZVMV3QJK3TEDENZQDX2NLAJ3IM4FWQ",
    b"/pins/index/cidRindex/uEiBZlIQ5Bl8pYZ70EoDLuTK-UsVtmcWWa2XgERI58Ji77w/"
    b"uN2NlYjZlZGU0YmM0NDhjYzliOTEzNzdkOGJlMzkxMWU",
    b"/pins/pin/7ceb6ede4bc448cc9b91377d8be3911e",
    b"/pins/state/dirty",
]


@pytest.fixture
def repo(tmp_path, go_fixtures) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(go_fixtures / "kubo-v16-repo", dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


def test_fixture_repo_opens_as_one_datastore(repo):
    for uri in (f"kubo:{repo}", str(repo)):
        with open_datastore(uri, readonly=True) as ds:
            assert isinstance(ds, KuboDatastore)
            assert [str(m.prefix) for m in ds.mounts] == ["/blocks", "/"]
            assert ds.get(BLOCK_KEY) == b"\n\x02\x08\x01"
            assert ds.get_size(BLOCK_KEY) == 4
            keys = [k for ks, _ in ds.scan_batches() for k in ks]
            assert keys == sorted(LEVELDB_KEYS + [BLOCK_KEY])
            listed = [e.key for e in ds.query(Query(prefix="/pins", keys_only=True))]
            assert listed == [k.decode() for k in LEVELDB_KEYS if k.startswith(b"/pins/")]
            assert ds.get("/pins/state/dirty") == b"\x00"
            assert ds.get(b"/ipns/AASAQAISEBRNCEQZPVHSYOXZDZSLONEZVMV3QJK3TEDENZQDX2NLAJ3IM4FWQ"
                          ).startswith(b"\n4/ipfs/Qm")
            assert ds.uri == f"kubo:{repo}"
            assert not ds.parallel_readable  # LevelDB takes an exclusive lock


def test_writes_route_to_the_right_mount(repo):
    with open_datastore(f"kubo:{repo}") as ds:
        ds.put("/blocks/CIQNEWBLOCK", b"block")
        ds.put("/local/filesroot", b"root")
    assert (repo / "blocks" / "OC" / "CIQNEWBLOCK.data").read_bytes() == b"block"
    with open_datastore(f"leveldb:{repo / 'datastore'}", readonly=True) as ldb:
        assert ldb.get("/local/filesroot") == b"root"
        assert not ldb.has("/blocks/CIQNEWBLOCK")


_HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # what Kubo's daemon holds (a POSIX write lock)
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_held_repo_lock_is_refused_with_exit_code_4(repo):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(repo / "repo.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for uri in (f"kubo:{repo}", str(repo)):
            with pytest.raises(LockedError, match="locked") as exc:
                open_datastore(uri, readonly=True)
            assert exc.value.exit_code == EXIT_LOCKED == 4
        with open_datastore(f"kubo:{repo}?allow_live=1", readonly=True) as ds:
            assert ds.get(BLOCK_KEY) == b"\n\x02\x08\x01"
        with open_datastore(f"kubo:{repo}", readonly=True, allow_live=True) as ds:
            assert ds.uri.endswith("?allow_live=1")
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with open_datastore(f"kubo:{repo}", readonly=True) as ds:  # released: opens again
        assert ds.has(BLOCK_KEY)


_TRY_LOCK = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("busy")
    else:
        print("free")
""")


def test_open_repo_keeps_a_daemon_from_starting(repo):
    (repo / "repo.lock").write_bytes(b"")

    def probe() -> str:
        return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(repo / "repo.lock")],
                              capture_output=True, text=True, check=True).stdout.strip()

    with open_datastore(f"kubo:{repo}", readonly=True):
        assert probe() == "busy"
    assert probe() == "free"


def test_two_opens_of_one_repo_keep_the_lock_until_the_last_closes(repo):
    """Two readers of one repo in one process (two threads backing it up): the POSIX lock on
    repo.lock belongs to the process and any close of the file drops it, so the first to
    close let a daemon start under the second."""
    (repo / "repo.lock").write_bytes(b"")

    def probe() -> str:
        return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(repo / "repo.lock")],
                              capture_output=True, text=True, check=True).stdout.strip()

    a = open_datastore(f"kubo:{repo}", readonly=True)
    b = open_datastore(f"kubo:{repo}", readonly=True)
    a.close()
    assert probe() == "busy"  # old code: "free"
    assert b.has(BLOCK_KEY)
    b.close()
    assert probe() == "free"


def test_flock_holder_is_not_mistaken_for_kubo(repo):
    """flock and fcntl locks are independent on Linux: only an fcntl lock means Kubo."""
    import fcntl

    fd = os.open(repo / "repo.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open_datastore(f"kubo:{repo}", readonly=True) as ds:
            assert ds.has(BLOCK_KEY)
    finally:
        os.close(fd)


def test_bad_specs(tmp_path, repo):
    (tmp_path / "notrepo").mkdir()
    with pytest.raises(DatastoreError):
        open_datastore(f"kubo:{tmp_path / 'notrepo'}")
    spec = json.loads((repo / "datastore_spec").read_text())
    spec["mounts"][1]["type"] = "badgerds"
    (repo / "datastore_spec").write_text(json.dumps(spec))
    with pytest.raises(DatastoreError, match="badgerds"):
        open_datastore(f"kubo:{repo}", readonly=True)
    (repo / "datastore_spec").write_text("{not json")
    with pytest.raises(DatastoreError, match="invalid JSON"):
        open_datastore(f"kubo:{repo}", readonly=True)


@pytest.mark.parametrize("spec", [
    [1, 2], "x", {"type": "mount", "mounts": [1]}, {"type": "mount", "mounts": "ab"},
    {"type": "mount", "mounts": [{"mountpoint": "/", "child": 3}]},
    {"type": "mount", "mounts": [{"mountpoint": "/blocks", "path": 5, "type": "flatfs"}]},
    {"type": "mount", "mounts": [{"mountpoint": "/blocks", "path": "blocks", "shardFunc": 5,
                                  "type": "flatfs"}]},
    {"type": "mount", "mounts": [{"mountpoint": 5, "path": "blocks", "type": "flatfs"}]},
])
def test_a_datastore_spec_of_the_wrong_shape_is_one_line(repo, run_cli, tmp_path, spec):
    # valid JSON of another shape (hand-edited, damaged) was an internal AttributeError or
    # TypeError ('list' object has no attribute 'get'), exit 2 with "a bug" (hostile review)
    (repo / "datastore_spec").write_text(json.dumps(spec))
    with pytest.raises(DatastoreError, match="datastore_spec: .*not a datastore_spec Kubo"):
        open_datastore(f"kubo:{repo}", readonly=True)
    if spec == [1, 2]:
        r = run_cli("backup", f"kubo:{repo}", tmp_path / "a.tar.gz")
        assert r.returncode == 2 and "internal error" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1


def test_measure_wrappers_are_unwrapped(repo):
    spec = json.loads((repo / "datastore_spec").read_text())
    spec["mounts"] = [{"mountpoint": m["mountpoint"],
                       "child": {"type": "measure", "prefix": "x", "child": m}}
                      for m in spec["mounts"]]
    (repo / "datastore_spec").write_text(json.dumps(spec))
    with open_datastore(f"kubo:{repo}", readonly=True) as ds:
        assert ds.get(BLOCK_KEY) == b"\n\x02\x08\x01"


def _table_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.suffix in (".ldb", ".sst"))


def _write_zeros_and_flush(uri: str, leveldb_dir: Path) -> int:
    """200 KB of zeros in 50 records; reopening makes LevelDB turn its log into a table
    (with the reopening store's compression); returns the tables' size."""
    with open_datastore(uri) as ds:
        ds.put_many([b"/z/%03d" % i for i in range(50)], [bytes(4096)] * 50)
    with open_datastore(uri) as ds:
        assert ds.get("/z/007") == bytes(4096)
    return _table_bytes(leveldb_dir)


@pytest.mark.parametrize("compression", ["none", "snappy", "", None])
def test_levelds_tables_use_the_configs_compression(repo, compression):
    """Kubo's levelds plugin (ipfs/kubo plugin/plugins/levelds/levelds.go) maps config's
    ``"compression"``: ``"none"`` -> goleveldb NoCompression, ``"snappy"`` and ``""`` ->
    snappy (goleveldb's default); the fixture's config (Kubo's default) says ``"none"``, and
    ``datastore_spec`` does not record it. A config without the mount: Kubo's default."""
    config = json.loads((repo / "config").read_text())
    level = config["Datastore"]["Spec"]["mounts"][1]
    assert level["type"] == "levelds" and level["compression"] == "none"  # as Kubo wrote it
    if compression is None:
        (repo / "config").unlink()  # a restore opens the repo before writing the config
    else:
        level["compression"] = compression
        (repo / "config").write_text(json.dumps(config))
    size = _write_zeros_and_flush(f"kubo:{repo}", repo / "datastore")
    if compression in ("none", None):
        assert size > 50 * 4096  # stored as they are
    else:
        assert 0 < size < 50 * 4096 // 4


def test_levelds_compression_inside_measure_wrappers(repo):
    """Kubo's default config before the flattened form (ipfs/kubo config/init.go,
    DefaultDatastoreConfig) wraps each mount in ``measure`` with the real spec in
    ``child``: the levelds child's ``compression`` is found there too."""
    config = json.loads((repo / "config").read_text())
    config["Datastore"]["Spec"] = {"type": "mount", "mounts": [
        {"mountpoint": "/blocks", "type": "measure", "prefix": "flatfs.datastore",
         "child": {"type": "flatfs", "path": "blocks", "sync": True,
                   "shardFunc": "/repo/flatfs/shard/v1/next-to-last/2"}},
        {"mountpoint": "/", "type": "measure", "prefix": "leveldb.datastore",
         "child": {"type": "levelds", "path": "datastore", "compression": "snappy"}}]}
    (repo / "config").write_text(json.dumps(config))
    assert 0 < _write_zeros_and_flush(f"kubo:{repo}", repo / "datastore") < 50 * 4096 // 4
