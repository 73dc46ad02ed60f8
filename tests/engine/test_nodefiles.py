"""A whole Kubo node backed up and restored (dsbackup.engine.nodefiles, docs/FORMAT.md §11.2), with
the committed Kubo v16 fixture repository and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from dsbackup.archive.member import member_end
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine.nodefiles import collect_kubo
from tests.support.kubonode import kubo_records

NODE_FILES = ["config", "datastore_spec", "keystore/key_mykey", "version"]


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


@pytest.fixture
def repo(kubo_node_repo):
    return kubo_node_repo


def test_a_kubo_node_restores_into_a_missing_directory(tmp_path, repo, run_cli):
    archive = tmp_path / "node.tar.gz"
    r = run_cli("backup", f"kubo:{repo}", archive)
    assert r.returncode == 0, r.stderr
    assert "private key" in r.stderr and "back up with --encrypt" in r.stderr
    with ArchiveReader(archive) as a:
        assert a.version == 2 and a.manifest["node"]["private_key"] is True
        names = [f.path.decode() for f in a.node_files() if not f.is_dir]
    assert names == NODE_FILES  # no lock, api, gateway, temp file or datastore file
    new = tmp_path / "restored"
    r = run_cli("restore", archive, f"kubo:{new}")
    assert r.returncode == 0, r.stderr
    assert "node: wrote 4 of the node's own files" in r.stderr
    for name in NODE_FILES:
        assert (new / name).read_bytes() == (repo / name).read_bytes(), name
        src_mode = (repo / name).stat().st_mode & 0o777
        assert (new / name).stat().st_mode & 0o777 == src_mode & ~_umask(), name
        assert (new / name).stat().st_mtime_ns == (repo / name).stat().st_mtime_ns
    assert (new / "keystore").stat().st_mode & 0o777 == 0o700
    for name in ("repo.lock", "api", "gateway", "config.tmp"):
        assert not (new / name).exists(), name
    assert json.loads((new / "config").read_text())["Identity"] == \
        json.loads((repo / "config").read_text())["Identity"]
    assert kubo_records(new) == kubo_records(repo)  # every datastore record, both mounts
    assert not list(new.rglob("*.dsbackup-tmp-*"))


def test_backup_json_and_inspect_ls_verify_show_the_node(tmp_path, repo, run_cli):
    archive = tmp_path / "node.tar.gz"
    r = run_cli("backup", "--json", f"kubo:{repo}", archive)
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)["backup"]
    assert b["version"] == 2
    assert b["node"] == {"kind": "kubo", "files": 4,
                         "bytes": sum((repo / n).stat().st_size for n in NODE_FILES),
                         "private_key": True}
    assert "private key" in b["node_warning"] and "--encrypt" in b["node_warning"]

    r = run_cli("inspect", archive)
    assert r.returncode == 0, r.stderr
    assert "format version  2" in r.stdout
    assert "4 files, 1 directories" in r.stdout and "private key: yes" in r.stdout
    r = run_cli("inspect", "--json", archive)
    assert json.loads(r.stdout)["backup"]["node"]["files"] == 4

    r = run_cli("ls", archive)
    lines = r.stdout.splitlines()
    assert lines[:5] == ["node:config", "node:datastore_spec", "node:keystore/",
                         "node:keystore/key_mykey", "node:version"]
    assert all(line.startswith("/") for line in lines[5:]) and len(lines) > 5
    r = run_cli("ls", "-l", archive)
    assert r.stdout.splitlines()[0].split() == [
        str((repo / "config").stat().st_size), "0600", "node:config"]
    rows = [json.loads(x) for x in run_cli("ls", "--json", archive).stdout.splitlines()]
    assert rows[1] == {"node": "config", "kind": "file", "mode": "0600",
                       "size": (repo / "config").stat().st_size}
    assert "node:" not in run_cli("ls", "--prefix", "/blocks", archive).stdout

    r = run_cli("verify", archive)
    assert r.returncode == 0 and "node member: 5 entries parsed" in r.stderr, r.stderr
    r = run_cli("verify", "--quick", "--json", archive)
    v = json.loads(r.stdout)
    assert v["ok"] and v["node_files"] is None and v["node_bytes"] > 0


def test_datastore_only_writes_a_version_1_archive(tmp_path, repo, run_cli):
    archive = tmp_path / "ds.tar.gz"
    r = run_cli("backup", "--datastore-only", f"kubo:{repo}", archive)
    assert r.returncode == 0, r.stderr
    assert "private key" not in r.stderr
    with ArchiveReader(archive) as a:
        assert (a.version, a.has_node, a.manifest["version"]) == (1, False, 1)
        assert "node" not in a.manifest
        raw = a.pread(a.trailer.index_offset, a.trailer.index_length)
    data = memoryview(archive.read_bytes())
    pos, versions = 0, set()
    while pos < len(data) - 1129:
        sub, pos = member_end(data, pos)
        versions.add(sub.version)
    assert versions == {1} and data[-1129 + 16] == 1  # every member and the trailer
    assert raw  # the index decoded with its reserved bytes zero (checked by the reader)
    # as before: a datastore-only archive cannot make a repository by itself
    r = run_cli("restore", archive, f"kubo:{tmp_path / 'new'}")
    assert r.returncode == 2 and "datastore_spec" in r.stderr


def test_version_1_archives_still_restore(tmp_path, repo, run_cli):
    archive = tmp_path / "ds.tar.gz"
    assert run_cli("backup", "--datastore-only", f"kubo:{repo}", archive).returncode == 0
    target = tmp_path / "target"
    shutil.copytree(repo, target)
    for sub in ("blocks", "datastore"):
        shutil.rmtree(target / sub)
    for name in ("repo.lock", "api", "gateway"):
        (target / name).unlink()
    r = run_cli("restore", archive, f"kubo:{target}")
    assert r.returncode == 0, r.stderr
    assert kubo_records(target) == kubo_records(repo)
    assert run_cli("verify", archive).returncode == 0
    out = run_cli("inspect", archive).stdout
    assert "node            none (datastore records only)" in out
    assert "format version  1" in out


def test_incremental_and_consolidated_archives_carry_the_node_whole(tmp_path, repo, run_cli):
    full = tmp_path / "full.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", full).returncode == 0
    cfg = json.loads((repo / "config").read_text())
    cfg["Addresses"] = {"API": "/ip4/127.0.0.1/tcp/6001"}
    (repo / "config").write_text(json.dumps(cfg))
    inc = tmp_path / "inc.tar.gz"
    r = run_cli("backup", "--parent", full, f"kubo:{repo}", inc)
    assert r.returncode == 0, r.stderr
    assert "private key" in r.stderr
    with ArchiveReader(inc) as a:
        assert a.version == 2 and a.is_incremental
        assert {f.path: f.data for f in a.node_files()}[b"config"] == \
            (repo / "config").read_bytes()
    cons = tmp_path / "cons.tar.gz"
    r = run_cli("consolidate", inc, cons)
    assert r.returncode == 0, r.stderr
    for archive in (inc, cons):
        new = tmp_path / f"r-{archive.stem}"
        r = run_cli("restore", archive, f"kubo:{new}")
        assert r.returncode == 0, r.stderr
        assert (new / "config").read_bytes() == (repo / "config").read_bytes()
        assert kubo_records(new) == kubo_records(repo)
    with ArchiveReader(cons) as a:
        assert a.version == 2 and not a.is_incremental and len(a.node_files()) == 5


def test_a_symlink_in_the_source_repository_fails_the_backup(tmp_path, repo, run_cli):
    (repo / "plugins").symlink_to("/etc")
    r = run_cli("backup", f"kubo:{repo}", tmp_path / "a.tar.gz")
    assert r.returncode == 2 and "plugins" in r.stderr and "--datastore-only" in r.stderr
    assert not (tmp_path / "a.tar.gz").exists()
    r = run_cli("backup", "--datastore-only", f"kubo:{repo}", tmp_path / "a.tar.gz")
    assert r.returncode == 0, r.stderr


def test_collect_skips_the_datastores_named_by_the_spec(tmp_path, repo):
    spec = json.loads((repo / "datastore_spec").read_text())
    (repo / "blocks").rename(repo / "fs")
    spec["mounts"][0]["path"] = "fs"
    (repo / "datastore_spec").write_text(json.dumps(spec))
    (repo / "blocks").mkdir()  # not a datastore any more: an ordinary directory
    snap = collect_kubo(repo)
    paths = {f.path for f in snap.files}
    assert b"fs" not in paths and not any(p.startswith(b"fs/") for p in paths)
    assert b"datastore" not in paths and b"blocks" in paths


def test_a_whole_node_incremental_of_a_datastore_only_parent(tmp_path, repo, run_cli):
    """Format versions may differ along a chain: a version-2 child references chunks of a
    version-1 parent."""
    full = tmp_path / "full.tar.gz"
    assert run_cli("backup", "--datastore-only", f"kubo:{repo}", full).returncode == 0
    inc = tmp_path / "inc.tar.gz"
    r = run_cli("backup", "--parent", full, f"kubo:{repo}", inc)
    assert r.returncode == 0, r.stderr
    with ArchiveReader(inc) as a:
        assert a.version == 2 and a.summary["referenced_chunks"] == a.chunk_count
    assert run_cli("verify", inc).returncode == 0
    new = tmp_path / "new"
    assert run_cli("restore", inc, f"kubo:{new}").returncode == 0
    assert kubo_records(new) == kubo_records(repo)
    assert (new / "config").read_bytes() == (repo / "config").read_bytes()


def test_an_encrypted_node_backup_seals_the_private_key(tmp_path, repo, run_cli, cli_env):
    """docs/ENCRYPTION.md: the node member (config with Identity.PrivKey) is sealed too."""
    cli_env["DSBACKUP_TEST_SCRYPT_LOG2N"] = "14"
    (tmp_path / "pass").write_text("node pass\n")
    archive = tmp_path / "node.tar.gz"
    r = run_cli("backup", f"kubo:{repo}", archive, "--encrypt", "--passphrase-file",
                tmp_path / "pass")
    assert r.returncode == 0, r.stderr
    assert "private key" not in r.stderr  # sealed: no warning
    config = json.loads((repo / "config").read_text())
    assert config["Identity"]["PrivKey"].encode() not in archive.read_bytes()
    assert b"Identity" not in archive.read_bytes()
    out = tmp_path / "new"
    r = run_cli("restore", archive, f"kubo:{out}", "--passphrase-file", tmp_path / "pass")
    assert r.returncode == 0, r.stderr
    assert (out / "config").read_bytes() == (repo / "config").read_bytes()


def test_a_name_the_node_member_cannot_hold_fails_the_backup_naming_it(tmp_path, repo, run_cli):
    # a stray file whose name is not UTF-8 (or holds a backslash) in the repository: the
    # error was "node file b'bad\xffname': path is not UTF-8", without the repository's path
    # or what to do (hostile review)
    (repo / os.fsdecode(b"bad\xffname")).write_bytes(b"")
    r = run_cli("backup", f"kubo:{repo}", tmp_path / "a.tar.gz")
    assert r.returncode == 2, r.stderr
    assert str(repo) in r.stderr and "not UTF-8" in r.stderr and "--datastore-only" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a.tar.gz").exists()
