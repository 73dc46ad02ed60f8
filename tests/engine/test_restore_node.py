"""Node files written into restored Kubo repositories (dsbackup.engine.restore_node, docs/FORMAT.md
§11.2): existing repositories, symlinks in the way, cut-short restores, other targets."""

from __future__ import annotations

import json
import shutil

import pytest

from dsbackup.archive.node import KIND_DIR, KIND_FILE, NodeFile
from dsbackup.engine.restore_node import holds_only, is_empty_dir, write_node_files
from dsbackup.errors import RestoreError
from tests.support.kubonode import kubo_records


@pytest.fixture
def repo(kubo_node_repo):
    return kubo_node_repo


def test_existing_repository_keeps_its_node_files_unless_overwrite(tmp_path, repo, run_cli):
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    for sub in ("blocks", "datastore"):
        shutil.rmtree(other / sub)
    (other / "config").chmod(0o600)
    (other / "config").write_text('{"Identity": {"PeerID": "other"}}')
    r = run_cli("restore", archive, f"kubo:{other}")
    assert r.returncode == 0, r.stderr
    assert "were kept" in r.stderr and "--overwrite replaces them" in r.stderr
    assert "other" in (other / "config").read_text()
    r = run_cli("restore", "--overwrite", "--json", archive, f"kubo:{other}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restore"]["node_files"] == 4
    assert (other / "config").read_bytes() == (repo / "config").read_bytes()


def test_a_symlink_in_the_target_is_not_followed(tmp_path, repo, run_cli):
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "t"
    target.mkdir()
    (target / "keystore").symlink_to(outside)
    r = run_cli("restore", "--overwrite", archive, f"kubo:{target}")
    assert r.returncode == 2, r.stderr
    assert "keystore" in r.stderr and "symlink" in r.stderr
    assert list(outside.iterdir()) == []


def test_a_cut_short_node_restore_is_completed(tmp_path, repo, run_cli):
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    new = tmp_path / "new"
    new.mkdir()
    (new / "config").write_text("half")  # a node file of the archive, nothing else
    r = run_cli("restore", archive, f"kubo:{new}")
    assert r.returncode == 0, r.stderr
    assert (new / "config").read_bytes() == (repo / "config").read_bytes()
    assert kubo_records(new) == kubo_records(repo)
    # a rerun into the restored repository: node files already in place are not reported
    # as kept (as after a kill between the node files and the first journaled record)
    r = run_cli("restore", "--overwrite", archive, f"kubo:{new}")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    assert "node: wrote 4" in r.stderr  # --overwrite rewrites them (same content)
    r = run_cli("restore", "--skip-existing", archive, f"kubo:{new}")
    assert r.returncode == 0 and "note:" not in r.stderr and "node:" not in r.stderr


def test_other_targets_get_the_records_only(tmp_path, repo, run_cli):
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    r = run_cli("restore", archive, f"lmdb:{tmp_path / 'l'}")
    assert r.returncode == 0, r.stderr
    assert "node files (config, keystore/ ...) were not restored" in r.stderr
    assert not (tmp_path / "l" / "config").exists()


def test_write_node_files_modes_mtimes_and_read_only_directories(tmp_path):
    files = [NodeFile(b"a", KIND_DIR, 0o500, 0),  # read-only: its mode is set last
             NodeFile(b"a/f", KIND_FILE, 0o640, 1_600_000_000_123_456_789, b"data"),
             NodeFile(b"b/c/g", KIND_FILE, 0o7755, 5, b"")]  # parents made, setuid dropped
    root = tmp_path / "new"
    assert is_empty_dir(root) and not holds_only(root, files)
    assert write_node_files(root, files, umask=0o022) == 2
    assert (root / "a/f").read_bytes() == b"data"
    assert (root / "a/f").stat().st_mode & 0o7777 == 0o640
    assert (root / "a/f").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert (root / "a").stat().st_mode & 0o7777 == 0o500
    assert (root / "b/c/g").stat().st_mode & 0o7777 == 0o755
    assert root.stat().st_mode & 0o777 == 0o700  # it will hold a private key
    assert not holds_only(root, files)  # b/ and b/c/ are not entries
    assert holds_only(root, files + [NodeFile(b"b", KIND_DIR, 0o700, 0),
                                     NodeFile(b"b/c", KIND_DIR, 0o700, 0)])
    (root / "a").chmod(0o700)


def test_a_file_where_a_directory_belongs_is_refused(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "keystore").write_text("not a directory")
    with pytest.raises(RestoreError, match="keystore: not a directory"):
        write_node_files(root, [NodeFile(b"keystore/k", KIND_FILE, 0o400, 0, b"k")])
    assert (root / "keystore").read_text() == "not a directory"


def test_a_datastore_spec_placing_a_store_outside_the_target_is_refused(tmp_path, repo, run_cli):
    # The archive's datastore_spec decides where the records go: '../blocks-elsewhere' (or an
    # absolute path) made the restore write block files into a directory outside kubo:DIR,
    # among a user's files, exit 0 (hostile review)
    shutil.move(repo / "blocks", tmp_path / "blocks-elsewhere")
    spec = (repo / "datastore_spec").read_text()
    (repo / "datastore_spec").write_text(spec.replace('"path":"blocks"',
                                                      '"path":"../blocks-elsewhere"'))
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    victim = tmp_path / "x" / "blocks-elsewhere"
    victim.mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    target = tmp_path / "x" / "t"
    r = run_cli("restore", archive, f"kubo:{target}")
    assert r.returncode == 2, r.stderr
    assert "outside the target directory" in r.stderr and "../blocks-elsewhere" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in victim.rglob("*")) == ["notes.txt"]
    assert not target.exists()
    # a repository whose own datastore_spec names that path takes it (--overwrite)
    target.mkdir()
    shutil.copy(repo / "datastore_spec", target / "datastore_spec")
    shutil.rmtree(victim)
    r = run_cli("restore", "--overwrite", archive, f"kubo:{target}")
    assert r.returncode == 0, r.stderr
    assert kubo_records(target) == kubo_records(repo)


def test_a_node_restore_killed_while_writing_a_file_is_completed(tmp_path, repo, run_cli):
    # what a SIGKILL in write_node_files leaves: the files written so far and the temp file
    # of the one being written. The rerun called that an existing repository, kept its node
    # files (no keystore key, no version) and restored the records: exit 0 with a note, a
    # repository Kubo cannot open (hostile review)
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    new = tmp_path / "new"
    (new / "keystore").mkdir(parents=True)
    for name in ("config", "datastore_spec"):
        shutil.copy2(repo / name, new / name)
    (new / "keystore" / ".key_mykey.dsbackup-tmp-0123456789ab").write_bytes(b"\x08")
    r = run_cli("restore", archive, f"kubo:{new}")
    assert r.returncode == 0, r.stderr
    assert "note:" not in r.stderr and "node: wrote 4" in r.stderr, r.stderr
    for name in ("config", "version", "keystore/key_mykey"):
        assert (new / name).read_bytes() == (repo / name).read_bytes()
    assert sorted(p.name for p in (new / "keystore").iterdir()) == ["key_mykey"]
    assert kubo_records(new) == kubo_records(repo)


def test_an_absolute_datastore_spec_path_through_a_symlinked_repo_is_inside(tmp_path, repo,
                                                                           run_cli):
    # ~/.ipfs a symlink to /data/ipfs, the datastore_spec naming /data/ipfs/blocks: a restore
    # into kubo:~/.ipfs (the path the node uses) was refused as writing outside the target,
    # though the blocks land inside it (hostile review); so was the other way round
    real = tmp_path / "data" / "ipfs"
    real.parent.mkdir()
    shutil.move(repo, real)
    link = tmp_path / "home-ipfs"
    link.symlink_to(real)
    spec = (real / "datastore_spec").read_text()
    (real / "datastore_spec").write_text(spec.replace('"path":"blocks"',
                                                      f'"path":"{real / "blocks"}"'))
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{real}", archive).returncode == 0
    want = kubo_records(real)
    shutil.rmtree(real)
    real.mkdir()
    r = run_cli("restore", archive, f"kubo:{link}")
    assert r.returncode == 0, r.stderr
    assert kubo_records(real) == want
    # the spec naming the link's path, restored into the real directory
    (real / "datastore_spec").write_text(spec.replace('"path":"blocks"',
                                                      f'"path":"{link / "blocks"}"'))
    archive2 = tmp_path / "node2.tar.gz"
    assert run_cli("backup", f"kubo:{real}", archive2).returncode == 0
    shutil.rmtree(real)
    real.mkdir()
    r = run_cli("restore", archive2, f"kubo:{real}")
    assert r.returncode == 0, r.stderr
    assert kubo_records(real) == want


def test_overwrite_sets_aside_the_private_keys_the_archive_lacks_or_replaces(tmp_path, repo,
                                                                          run_cli):
    """`restore --overwrite` makes the target the archived node, but kept keystore keys the
    archive lacks, silently (the node then held keys it never had), and replaced a key or an
    identity without a word. Now each key the target would lose is moved aside, named on
    stderr, and the keystore is the archive's."""
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    ks = other / "keystore"
    ks.chmod(0o700)
    (ks / "key_extra").write_bytes(b"extra secret")
    (ks / "key_mykey").chmod(0o600)
    (ks / "key_mykey").write_bytes(b"another mykey")
    config = json.loads((repo / "config").read_text())
    config["Identity"]["PrivKey"] = "CAESQOTHERKEY"
    (other / "config").write_text(json.dumps(config))
    old_config = (other / "config").read_bytes()
    r = run_cli("restore", "--overwrite", archive, f"kubo:{other}")
    assert r.returncode == 0, r.stderr
    [kept] = [p for p in other.iterdir() if p.name.startswith("dsbackup-kept-keys-")]
    assert "2 keystore keys the archive lacks or holds other bytes for (key_extra, " \
           "key_mykey) and its former config" in r.stderr and str(kept) in r.stderr, r.stderr
    assert sorted(p.name for p in ks.iterdir()) == ["key_mykey"]
    assert (ks / "key_mykey").read_bytes() == (repo / "keystore" / "key_mykey").read_bytes()
    assert (kept / "keystore" / "key_extra").read_bytes() == b"extra secret"
    assert (kept / "keystore" / "key_mykey").read_bytes() == b"another mykey"
    assert (kept / "config").read_bytes() == old_config
    assert (other / "config").read_bytes() == (repo / "config").read_bytes()
    assert oct(kept.stat().st_mode & 0o777) == "0o700"
    # a rerun finds the keys in place: nothing more set aside, no note
    r = run_cli("restore", "--overwrite", archive, f"kubo:{other}")
    assert r.returncode == 0 and "set aside" not in r.stderr, r.stderr


def test_keys_set_aside_by_an_overwrite_that_then_fails_are_named(tmp_path, repo, run_cli):
    """The keys the target would lose were moved aside, then writing the node's files failed
    (here a directory where the archive has a key; a full disk alike): the error said nothing
    of where the target's own private keys had gone."""
    archive = tmp_path / "node.tar.gz"
    assert run_cli("backup", f"kubo:{repo}", archive).returncode == 0
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    ks = other / "keystore"
    ks.chmod(0o700)
    (ks / "key_extra").write_bytes(b"extra secret")
    (ks / "key_mykey").unlink()
    (ks / "key_mykey").mkdir()  # the archive's key_mykey cannot be written over it
    r = run_cli("restore", "--overwrite", archive, f"kubo:{other}")
    assert r.returncode != 0
    [kept] = [p for p in other.iterdir() if p.name.startswith("dsbackup-kept-keys-")]
    assert (kept / "keystore" / "key_extra").read_bytes() == b"extra secret"
    assert str(kept) in r.stderr and "key_extra" in r.stderr, r.stderr
