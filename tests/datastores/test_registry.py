"""open_datastore: URIs, bare-path detection, clear errors, reopening by uri."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup.datastores import detect_scheme, open_datastore, parse_uri, register_backend
from dsbackup.datastores.base import Checkable, DiskUsage, Scrubbable
from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.datastores.leveldb import LevelDbDatastore
from dsbackup.datastores.lmdb import LmdbDatastore
from dsbackup.datastores.memory import MemoryDatastore
from dsbackup.datastores.sqlite import SqliteDatastore
from dsbackup.errors import ConfigError, DatastoreError, LockedError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_parse_uri():
    assert parse_uri("lmdb:/a/b") == ("lmdb", "/a/b", {})
    assert parse_uri("flatfs:/x?shard=prefix/2&sync=0") == (
        "flatfs", "/x", {"shard": "prefix/2", "sync": "0"})
    assert parse_uri("memory:") == ("memory", "", {})
    assert parse_uri("/plain/path") == (None, "/plain/path", {})
    assert parse_uri("relative/dir") == (None, "relative/dir", {})
    assert parse_uri("C:/windows") == (None, "C:/windows", {})
    assert parse_uri("/odd:name/x") == (None, "/odd:name/x", {})


def _make_all(tmp: Path) -> dict[str, Path]:
    paths = {k: tmp / k for k in ("lmdb", "flatfs", "leveldb")}
    paths["sqlite"] = tmp / "store.db"
    for scheme, p in paths.items():
        with open_datastore(f"{scheme}:{p}") as ds:
            ds.put("/ABC", b"value-" + scheme.encode())
    return paths


def test_bare_paths_are_detected(tmp_path):
    kinds = {"lmdb": LmdbDatastore, "flatfs": FlatfsDatastore, "leveldb": LevelDbDatastore,
             "sqlite": SqliteDatastore}
    for scheme, p in _make_all(tmp_path).items():
        assert detect_scheme(p) == scheme
        with open_datastore(str(p), readonly=True) as ds:
            assert type(ds) is kinds[scheme]
            assert ds.get("/ABC") == b"value-" + scheme.encode()
        with open_datastore(p, readonly=True) as ds:  # os.PathLike works too
            assert ds.readonly


def test_parallel_readable_flags(tmp_path):
    want = {"lmdb": True, "flatfs": True, "sqlite": True, "leveldb": False}
    for scheme, p in _make_all(tmp_path).items():
        with open_datastore(f"{scheme}:{p}", readonly=True) as ds:
            assert ds.parallel_readable is want[scheme], scheme
    assert open_datastore("memory:").parallel_readable is False


def test_capabilities(tmp_path):
    for scheme, p in _make_all(tmp_path).items():
        with open_datastore(f"{scheme}:{p}", readonly=True) as ds:
            assert isinstance(ds, DiskUsage) and ds.disk_usage() > 0
            if scheme != "leveldb":
                assert isinstance(ds, Checkable) and isinstance(ds, Scrubbable)
                ds.check()
                ds.scrub()


def test_uri_reopens_in_another_process(tmp_path):
    code = ("import sys; from dsbackup.datastores import open_datastore\n"
            "ds = open_datastore(sys.argv[1], readonly=True)\n"
            "sys.stdout.write(ds.get('/ABC').decode()); ds.close()\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    for scheme, p in _make_all(tmp_path).items():
        with open_datastore(f"{scheme}:{p}", readonly=True) as ds:
            uri = ds.uri
        out = subprocess.run([sys.executable, "-c", code, uri], env=env, check=True,
                             capture_output=True, text=True).stdout
        assert out == "value-" + scheme


def test_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown datastore scheme 'nosuch'"):
        open_datastore(f"nosuch:{tmp_path}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatastoreError, match="no recognised datastore"):
        open_datastore(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(DatastoreError, match="not a recognised datastore"):
        open_datastore(str(tmp_path / "file.txt"))
    with pytest.raises(DatastoreError, match="no such file"):
        open_datastore(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no path"):
        open_datastore("lmdb:")
    with pytest.raises(DatastoreError):
        open_datastore(f"sqlite:{tmp_path / 'file.txt'}")
    with pytest.raises(DatastoreError):
        open_datastore(f"leveldb:{tmp_path / 'missing-ldb'}", readonly=True)


def test_register_backend():
    register_backend("scratch", lambda path, readonly=False: MemoryDatastore(
        f"scratch:{path}", readonly=readonly))
    ds = open_datastore("scratch:x", readonly=True)
    assert ds.uri == "scratch:x" and ds.readonly


LOCK_HOLDER = ("import sys, time; from dsbackup.datastores import open_datastore\n"
               "ds = open_datastore(sys.argv[1]); print('open', flush=True)\n"
               "sys.stdin.read()\n")


def test_leveldb_is_single_process(tmp_path):
    p = tmp_path / "ldb"
    open_datastore(f"leveldb:{p}").close()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, f"leveldb:{p}"],
                              env=dict(os.environ, PYTHONPATH=SRC), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(LockedError) as exc:
            open_datastore(f"leveldb:{p}", readonly=True)
        assert exc.value.exit_code == 4
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_tilde_is_expanded_in_every_uri(tmp_path, monkeypatch):
    # issue 20, item 9: `kubo:~/.ipfs` as documented; `lmdb:~/r` must not create ./~/r
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_uri("kubo:~/.ipfs") == ("kubo", f"{tmp_path}/.ipfs", {})
    assert parse_uri("flatfs:~/f?shard=x") == ("flatfs", f"{tmp_path}/f", {"shard": "x"})
    assert parse_uri("~/bare")[1] == f"{tmp_path}/bare"
    assert parse_uri("lmdb:/abs/~x")[1] == "/abs/~x"  # only a leading ~
    monkeypatch.chdir(tmp_path / "..")
    with open_datastore("lmdb:~/r") as ds:
        ds.put(b"/k", b"v")
    assert (tmp_path / "r" / "data.mdb").is_file()
    assert not Path("~").exists()


def test_tilde_in_a_restore_target_on_the_command_line(tmp_path, run_cli, cli_env):
    src = tmp_path / "s"
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/k", b"v")
    r = run_cli("backup", f"lmdb:{src}", tmp_path / "a.tar.gz")
    assert r.returncode == 0, r.stderr
    cli_env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    r = run_cli("restore", tmp_path / "a.tar.gz", "lmdb:~/r", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "home" / "r" / "data.mdb").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("scheme", ["lmdb", "sqlite", "flatfs", "leveldb", "fsds"])
def test_scheme_and_location_attributes(tmp_path, monkeypatch, scheme):
    """Every backend says what it is and where it lives (absolute, without URI parameters),
    so nothing re-parses its uri."""
    monkeypatch.chdir(tmp_path)
    name = "s.db" if scheme == "sqlite" else "s"
    query = "?shard=next-to-last/2" if scheme == "flatfs" else ""
    with open_datastore(f"{scheme}:{name}{query}") as ds:
        assert ds.scheme == scheme
        assert ds.location == str(tmp_path / name)
    with open_datastore("memory:") as ds:
        assert (ds.scheme, ds.location) == ("memory", "")


def test_uri_parameters_are_checked(tmp_path):
    """A parameter the backend does not take was open_lmdb()'s TypeError ("internal error");
    a boolean typo (sync=ture) read as false (no fsync); a bad integer was int()'s message
    without the parameter, or an OverflowError inside py-lmdb (map_size=-1)."""
    with pytest.raises(ConfigError, match=r"unknown parameter 'max_name' \(did you mean "
                                          r"'max_names'\?\)"):
        open_datastore(f"flatfs:{tmp_path / 'f'}?max_name=10")
    with pytest.raises(ConfigError, match=r"unknown parameter 'bogus' \(known: map_size, sync"):
        open_datastore(f"lmdb:{tmp_path / 'l'}?bogus=1")
    with pytest.raises(ConfigError, match="unknown parameter 'x' .it takes none"):
        open_datastore("memory:?x=1")
    for uri in (f"lmdb:{tmp_path / 'l'}?sync=ture", f"sqlite:{tmp_path / 's.db'}?sync=2",
                f"flatfs:{tmp_path / 'f'}?metadata=maybe"):
        with pytest.raises(ConfigError, match="expected 1/0, true/false, yes/no or on/off"):
            open_datastore(uri)
    for uri, name in ((f"lmdb:{tmp_path / 'l'}?map_size=-1", "map_size"),
                      (f"lmdb:{tmp_path / 'l'}?map_size=99999999999999999999999", "map_size"),
                      (f"flatfs:{tmp_path / 'f'}?read_ahead=abc", "read_ahead"),
                      (f"flatfs:{tmp_path / 'f'}?read_ahead=-1", "read_ahead"),
                      (f"flatfs:{tmp_path / 'f'}?read_ahead=100000", "read_ahead")):
        with pytest.raises(ConfigError, match=f"parameter {name}: expected an integer"):
            open_datastore(uri)
    assert not (tmp_path / "l").exists()
    (tmp_path / "f").mkdir()
    with open_datastore(f"flatfs:{tmp_path / 'f'}?sync=off&metadata=No&read_ahead=0"
                        "&shard=next-to-last/2") as ds:
        assert ds.read_ahead == 0 and not ds.sync_writes
    with open_datastore(f"lmdb:{tmp_path / 'l'}?sync=TRUE&map_size=1048576") as ds:
        ds.put(b"/k", b"v")
