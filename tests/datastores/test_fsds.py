"""fsds: js-stores datastore-fs layout."""

from __future__ import annotations

import pytest
from runcli import cli, umask

from dsbackup.datastores import open_datastore
from dsbackup.datastores.fsds import FsDatastore
from dsbackup.errors import InvalidKey


def test_fsds_layout(tmp_path):
    ds = FsDatastore(tmp_path / "d", sync=False)
    ds.put("/a/b/c", b"abc")
    ds.put("/a", b"top")
    ds.put("/e", b"")
    ds.put_many([b"/x/y", b"/a-b"], [b"1", b"2"])
    assert (tmp_path / "d" / "a" / "b" / "c.data").read_bytes() == b"abc"
    assert (tmp_path / "d" / "a.data").read_bytes() == b"top"
    assert (tmp_path / "d" / "e.data").read_bytes() == b""
    assert (tmp_path / "d" / "a" / "b" / "c.data").stat().st_mode & 0o777 == 0o666 & ~umask()
    assert [k for ks, _ in ds.scan_batches() for k in ks] == sorted(
        [b"/a", b"/a/b/c", b"/e", b"/x/y", b"/a-b"])
    for bad in [b"/", b"/a//b", b"/a/./b", b"/../x", b"/a\x00b", b"/" + b"n" * 251, b"/a/"]:
        with pytest.raises(InvalidKey, match="cannot be stored"):
            ds.put(bad, b"x")
    assert sorted(p.name for p in (tmp_path / "d").rglob("*") if p.name.startswith(".")) == []
    (tmp_path / "d" / "a" / "stray.tmp").write_bytes(b"")
    assert ds.audit_files().count == 1
    ds.close()


def test_fsds_key_refused_names_the_key_on_restore(tmp_path):
    src = open_datastore(f"lmdb:{tmp_path / 'l'}")
    src.put(b"/ok", b"1")
    src.put(b"/bad//key", b"2")
    src.close()
    assert cli("backup", f"lmdb:{tmp_path / 'l'}", str(tmp_path / "a.tar.gz")).returncode == 0
    r = cli("restore", str(tmp_path / "a.tar.gz"), f"fsds:{tmp_path / 'f'}")
    assert r.returncode == 2 and "/bad//key" in r.stderr and "Traceback" not in r.stderr


def test_non_empty_store_with_no_records_is_never_exit_0(tmp_path):
    d = tmp_path / "fs"
    (d / "a").mkdir(parents=True)
    (d / "a" / "b.json").write_bytes(b"{}")  # not datastore-fs: no .data
    r = cli("backup", f"fsds:{d}", str(tmp_path / "a.tar.gz"))
    assert r.returncode == 2 and "a/b.json" in r.stderr
    r = cli("backup", f"fsds:{d}", str(tmp_path / "a.tar.gz"), "--skip-foreign")
    assert r.returncode == 1 and "1 foreign" in r.stderr
