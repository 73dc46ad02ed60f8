"""restore and ls check what verify checks about an archive's structure (issue 20, item 5):
chunk key ranges ordered and disjoint, every payload key inside its chunk's range, the key
digest — before a chunk's records are written or listed. Archives that lie only there (every
member checksum is right) are refused with exit 3 and nothing of the bad chunk is written."""

from __future__ import annotations

import pytest
from crafted import craft, crafted_archives
from storerecords import store_records

from dsbackup.archive.verify import verify_archive
from dsbackup.datastores import open_datastore
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import IntegrityError

KINDS = ["same_key_twice", "overlapping", "key_outside_range", "wrong_key_digest"]


@pytest.fixture
def archives(tmp_path):
    return crafted_archives(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_verify_refuses_each(archives, kind):
    assert not verify_archive(archives[kind]).ok


@pytest.mark.parametrize("scheme", ["lmdb", "sqlite", "flatfs"])
@pytest.mark.parametrize("kind", KINDS)
def test_restore_refuses_before_writing(archives, tmp_path, kind, scheme):
    target = tmp_path / f"t-{scheme}"
    uri = f"{scheme}:{target}" + (".db" if scheme == "sqlite" else "")
    with pytest.raises(IntegrityError):
        restore_archive(archives[kind], uri)
    if target.exists() or (scheme == "sqlite" and (tmp_path / f"t-{scheme}.db").exists()):
        # a layout lie is refused before the target is touched; a chunk's own lie before
        # anything of that chunk (here the only one) is written
        assert store_records(uri) == {}


def test_restore_overwrite_mode_refuses_too(archives, tmp_path):
    uri = f"lmdb:{tmp_path / 't'}"
    ds = open_datastore(uri)
    ds.put_many([b"/A"], [b"mine"])
    ds.close()
    with pytest.raises(IntegrityError):
        restore_archive(archives["same_key_twice"], uri, mode="overwrite")
    assert store_records(uri) == {b"/A": b"mine"}


def test_good_crafted_archive_restores(tmp_path):
    """The crafting helper itself makes archives restore accepts when they are honest."""
    good = craft(tmp_path / "good.tar.gz", [{"records": [(b"/A", b"1")]},
                                             {"records": [(b"/B", b"2"), (b"/C", b"3")]}])
    assert verify_archive(good).ok
    uri = f"lmdb:{tmp_path / 't'}"
    restore_archive(good, uri)
    assert store_records(uri) == {b"/A": b"1", b"/B": b"2", b"/C": b"3"}


@pytest.mark.parametrize("kind", KINDS)
def test_cli_restore_and_ls_exit_3(archives, tmp_path, run_cli, kind):
    target = tmp_path / "cli-target"
    r = run_cli("restore", archives[kind], f"lmdb:{target}")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "chunk" in r.stderr
    r = run_cli("ls", archives[kind])
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "/Z/secret" not in r.stdout
    assert "evil" not in r.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_ls_api_refuses(archives, kind):
    from dsbackup.archive.listing import iter_listing
    from dsbackup.archive.reader import ArchiveReader

    with ArchiveReader(archives[kind]) as r, pytest.raises(IntegrityError):
        list(iter_listing(r))


@pytest.mark.parametrize("kind", ["same_key_twice", "overlapping"])
def test_ls_prints_nothing_for_a_bad_layout(archives, run_cli, kind):
    r = run_cli("ls", "--json", archives[kind])
    assert r.returncode == 3, r.stderr
    assert all('"key"' not in line for line in r.stdout.splitlines()), r.stdout
    assert not r.stdout.startswith('{"schema"'), r.stdout
