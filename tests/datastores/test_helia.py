"""helia: against repositories written in Helia's js-stores layouts
(tests/support/helia_repo.py), and cross restores with Kubo."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helia_repo import helia_block_path, make_helia_repo, write_blockstore
from runcli import COPY_PLAN, cli, files
from snapshot import assert_unchanged, snapshot

from dsbackup.datastores import open_datastore


def kubo_repo(tmp_path: Path, go_fixtures: Path) -> Path:
    """An empty Kubo repo: the fixture's config files, no datastore contents."""
    dst = tmp_path / "kubo"
    dst.mkdir()
    for name in ("config", "datastore_spec", "version"):
        shutil.copy(go_fixtures / "kubo-v16-repo" / name, dst / name)
    return dst


@pytest.mark.parametrize("level", [False, True], ids=["datastore-fs", "datastore-level"])
def test_helia_repo_round_trip_is_file_identical(tmp_path, level):
    repo = tmp_path / "repo"
    blocks, records = make_helia_repo(repo, blocks=320, level=level)
    before = snapshot(repo) if not level else None
    r = cli("backup", f"helia:{repo}", str(tmp_path / "h.tar.gz"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backup"]["total_keys"] == len(blocks) + len(records)
    if before is not None:  # LevelDB's own open is another helper's (snapshot copy) concern
        assert_unchanged(before, snapshot(repo))
    out = tmp_path / "out"
    r = cli("restore", str(tmp_path / "h.tar.gz"), f"helia:{out}"
            + ("?datastore=level" if level else ""))
    assert r.returncode == 0, r.stderr
    if level:
        assert files(out / "blocks") == files(repo / "blocks")
        ds = open_datastore(f"helia:{out}", readonly=True)
        assert {k: v for ks, vs in ds.scan_batches(b"/", b"/blocks/") for k, v in
                zip(ks, vs)} | {k: v for ks, vs in ds.scan_batches(b"/blocks0") for k, v in
                                zip(ks, vs)} == records
        ds.close()
    else:
        assert files(out) == files(repo)  # same files, contents and modes; nothing extra


def test_helia_keys_are_kubos_and_cross_restores(tmp_path, go_fixtures):
    repo = tmp_path / "repo"
    blocks, _ = make_helia_repo(repo, blocks=310)
    ds = open_datastore(f"helia:{repo}", readonly=True)
    keys = [k for ks, _ in ds.scan_batches(b"/blocks/", b"/blocks0") for k in ks]
    assert keys == sorted(f"/blocks/{n}".encode() for n in blocks)
    ds.close()
    assert cli("backup", f"helia:{repo}", str(tmp_path / "h.tar.gz")).returncode == 0
    kubo = kubo_repo(tmp_path, go_fixtures)
    r = cli("restore", str(tmp_path / "h.tar.gz"), f"kubo:{kubo}")
    assert r.returncode == 0, r.stderr
    for name, value in blocks.items():  # Kubo's name: next-to-last/2 of the bare multihash
        f = kubo / "blocks" / name[-3:-1] / f"{name}.data"
        assert f.read_bytes() == value
        assert f.stat().st_mode & 0o777 == 0o600  # go-ds-flatfs: os.CreateTemp's mode
    # and back: the Kubo repo's archive into a new Helia repo gives the same block files
    assert cli("backup", f"kubo:{kubo}", str(tmp_path / "k.tar.gz")).returncode == 0
    back = tmp_path / "back"
    r = cli("restore", str(tmp_path / "k.tar.gz"), f"helia:{back}")
    assert r.returncode == 0, r.stderr
    assert files(back / "blocks") == files(repo / "blocks")


def test_kubo_fixture_restores_into_helia(tmp_path, go_fixtures):
    src = tmp_path / "k"
    shutil.copytree(go_fixtures / "kubo-v16-repo", src)
    assert cli("backup", f"kubo:{src}", str(tmp_path / "k.tar.gz")).returncode == 0
    out = tmp_path / "h"
    assert cli("restore", str(tmp_path / "k.tar.gz"), f"helia:{out}").returncode == 0
    names = sorted(p.name for p in (src / "blocks").glob("*/*.data"))
    got = sorted(p.name for p in (out / "blocks").glob("*/*.data"))
    assert got == ["B" + n for n in names]
    assert all(p.parent.name == p.stem[-2:] for p in (out / "blocks").glob("*/*.data"))
    assert {p.name for p in (out / "blocks").iterdir() if p.is_file()} == set()


def test_helia_copy_migration_leaves_source_and_writes_no_metadata(tmp_path):
    repo = tmp_path / "repo"
    make_helia_repo(repo, blocks=40)
    before = snapshot(repo)
    plan = tmp_path / "copy.toml"
    plan.write_text(COPY_PLAN)
    r = cli("migrate", str(plan), f"helia:{repo}", f"helia:{tmp_path / 'to'}")
    assert r.returncode == 0, r.stderr
    assert_unchanged(before, snapshot(repo))
    assert files(tmp_path / "to") == files(repo)  # no SHARDING, .temp, diskUsage.cache


def test_helia_blockstore_with_missing_b_prefix_is_foreign(tmp_path):
    root = tmp_path / "repo" / "blocks"
    write_blockstore(root, {"CIQAAAA": b"x"})
    p = helia_block_path(root, "CIQAAAA")
    p.rename(p.parent / "CIQAAAA.data")  # no multibase prefix: not a blockstore-fs name
    ds = open_datastore(f"helia:{tmp_path / 'repo'}", readonly=True)
    assert ds.audit_files().count == 1 and ds.is_empty()
    ds.close()


def test_bare_helia_path_is_detected(tmp_path):
    make_helia_repo(tmp_path / "repo", blocks=5, records=2)
    ds = open_datastore(str(tmp_path / "repo"), readonly=True)
    assert ds.uri == f"helia:{tmp_path / 'repo'}" and ds.datastore_kind == "fs"
    ds.close()


def test_datastore_level_tables_are_uncompressed(tmp_path):
    """js-stores datastore-level (packages/datastore-level/src/index.ts) opens its Level
    with ``compression: false // same default as go``: its tables are not compressed, and
    neither are ours ('leveldb:' alone keeps LevelDB's snappy default)."""
    repo = tmp_path / "repo"
    with open_datastore(f"helia:{repo}?datastore=level") as ds:
        ds.put_many([b"/z/%03d" % i for i in range(50)], [bytes(4096)] * 50)
    with open_datastore(f"helia:{repo}") as ds:  # LevelDB writes its log into a table
        assert ds.datastore_kind == "level" and ds.get("/z/007") == bytes(4096)
    tables = [p for p in (repo / "datastore").iterdir() if p.suffix in (".ldb", ".sst")]
    assert tables and sum(p.stat().st_size for p in tables) > 50 * 4096


def _real_repo(tmp_path: Path, go_fixtures: Path, kind: str) -> tuple[Path, dict[str, bytes]]:
    src = go_fixtures / "helia-js-stores"
    if not src.is_dir():  # DSBACKUP_FIXTURES may name an older copy: ours always has it
        src = Path(__file__).parents[1] / "fixtures" / "helia-js-stores"
    repo = tmp_path / f"real-{kind}"
    shutil.copytree(src / kind, repo)
    for p in [repo, *repo.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    doc = json.loads((src / "expected.json").read_text())
    want = {f"/blocks/{k}": v.encode() for k, v in doc["blocks"].items()}
    want |= {k: v.encode() for k, v in doc["records"].items()}
    return repo, want


@pytest.mark.parametrize("kind", ["level", "fs"])
def test_repo_written_by_js_stores_reads_and_restores_exactly(tmp_path, go_fixtures, kind):
    """A repo written by the real blockstore-fs / datastore-fs / datastore-level
    (tests/fixtures/helia-js-stores, see its README; layouts from ipfs/js-stores
    packages/blockstore-fs/src/sharding.ts NextToLast, datastore-fs/src/index.ts _encode,
    datastore-level/src/index.ts) reads as exactly the records js-stores reads back
    (sha2-512 and identity multihashes, CIDv0, an empty block, nested and non-ASCII keys),
    and its archive restores into a new repo of the same kind file for file."""
    repo, want = _real_repo(tmp_path, go_fixtures, kind)
    with open_datastore(f"helia:{repo}", readonly=True) as ds:
        assert ds.datastore_kind == kind
        got = {k.decode(): v for ks, vs in ds.scan_batches() for k, v in zip(ks, vs)}
        assert ds.audit_files().count == 0
    assert got == want
    archive = tmp_path / "a.tar.gz"
    assert cli("backup", f"helia:{repo}", str(archive)).returncode == 0
    out = tmp_path / "out"
    r = cli("restore", str(archive), f"helia:{out}?datastore={kind}")
    assert r.returncode == 0, r.stderr
    assert files(out / "blocks") == files(repo / "blocks")
    if kind == "fs":
        assert files(out) == files(repo)
    with open_datastore(f"helia:{out}", readonly=True) as ds:
        assert {k.decode(): v for ks, vs in ds.scan_batches() for k, v in zip(ks, vs)} == want


@pytest.mark.parametrize("kind", ["level", "fs"])
def test_steno_temp_files_helia_leaves_are_not_foreign(tmp_path, go_fixtures, kind):
    """blockstore-fs and datastore-fs (ipfs/js-stores packages/*/src/index.ts writeFile)
    write through steno's Writer (typicode/steno src/index.ts: ``.<file>.tmp`` beside
    ``<file>``, then renamed); a Helia stopped mid-write leaves it, and js-stores' readers
    (``**/*.data`` globs) ignore it. It is counted in ``temp_files``, not as foreign; the
    backup succeeds with every record."""
    repo, want = _real_repo(tmp_path, go_fixtures, kind)
    block = next(p for p in (repo / "blocks").rglob("*.data"))
    (block.parent / f".{block.name}.tmp").write_bytes(b"cut short")
    if kind == "fs":
        (repo / "datastore" / "pkcs8" / ".self.data.tmp").write_bytes(b"cut short")
    with open_datastore(f"helia:{repo}", readonly=True) as ds:
        audit = ds.audit_files()
        assert (audit.count, audit.temp_files) == (0, 2 if kind == "fs" else 1)
    archive = tmp_path / "a.tar.gz"
    r = cli("backup", f"helia:{repo}", str(archive))
    assert r.returncode == 0, r.stderr
    other = next(d for d in (repo / "blocks").iterdir() if d != block.parent)
    (other / f".{block.name}.tmp").write_bytes(b"")  # not a file of that shard
    with open_datastore(f"helia:{repo}", readonly=True) as ds:
        assert ds.audit_files().count == 1


def test_new_repo_restored_from_a_datastore_level_repo_is_datastore_level(tmp_path,
                                                                          go_fixtures):
    """A Helia node opens its datastore with one class (js-stores' LevelDatastore or
    FsDatastore): a datastore-level node restored into a datastore-fs tree would open an
    empty LevelDB there and start with a new identity. The source's kind is in its URI
    (``helia:PATH?datastore=level``, so in the archive's manifest) and a new repo restored
    from it gets datastore-level; an existing repo keeps its own kind."""
    repo, want = _real_repo(tmp_path, go_fixtures, "level")
    with open_datastore(f"helia:{repo}", readonly=True) as ds:
        assert ds.uri == f"helia:{repo}?datastore=level"
    archive = tmp_path / "a.tar.gz"
    assert cli("backup", f"helia:{repo}", str(archive)).returncode == 0
    out = tmp_path / "out"
    r = cli("restore", str(archive), f"helia:{out}")
    assert r.returncode == 0, r.stderr
    assert (out / "datastore" / "CURRENT").is_file()
    assert files(out / "blocks") == files(repo / "blocks")
    with open_datastore(f"helia:{out}", readonly=True) as ds:
        assert ds.datastore_kind == "level"
        assert {k.decode(): v for ks, vs in ds.scan_batches() for k, v in zip(ks, vs)} == want
    fs_repo, _ = _real_repo(tmp_path, go_fixtures, "fs")  # existing: stays datastore-fs
    r = cli("restore", str(archive), f"helia:{fs_repo}", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (fs_repo / "datastore" / "CURRENT").exists()
    assert (fs_repo / "datastore" / "pkcs8" / "self.data").read_bytes() == want["/pkcs8/self"]


def test_modes_follow_the_umask_as_node_gives_them(tmp_path):
    """blockstore-fs and datastore-fs create directories with ``fs.mkdir(dir, {recursive:
    true})`` (mode 0777) and files with steno's ``fs.writeFile`` (0666), less the umask:
    under umask 002 directories are 0775 and files 0664 (go-ds-flatfs's 0755 is Kubo's)."""
    old = os.umask(0o002)
    try:
        with open_datastore(f"helia:{tmp_path / 'repo'}") as ds:
            ds.put("/blocks/CIQAAAB", b"1")
            ds.put("/pins/CIQA", b"2")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path / "repo")): p.stat().st_mode & 0o777
             for p in (tmp_path / "repo").rglob("*")}
    assert modes == {"blocks": 0o775, "blocks/AB": 0o775, "blocks/AB/BCIQAAAB.data": 0o664,
                     "datastore": 0o775, "datastore/pins": 0o775,
                     "datastore/pins/CIQA.data": 0o664}


@pytest.mark.parametrize("kind", ["level", "fs"])
def test_a_killed_restores_temp_files_are_ours_not_foreign(tmp_path, go_fixtures, kind):
    """A restore into a Helia repo killed mid-write leaves this package's own temp files:
    ``.temp-XXXXXXXX`` in a blockstore shard (flatfs.py _temp_file) and, for datastore-fs,
    ``.<name>.data.tmp-XXXXXXXX`` (fsds.py _write). They were counted as foreign, so the next
    backup failed (exit 2) or, with --skip-foreign, warned (exit 1). They are counted in
    temp_files like the real writers' own, the backup succeeds (exit 0) with every record
    and says how many it left out (text and --json)."""
    import tempfile

    from dsbackup.datastores.fsds import OWN_TEMP_INFIX
    from dsbackup.datastores.helia import open_blockstore

    repo, want = _real_repo(tmp_path, go_fixtures, kind)
    block = next(p for p in (repo / "blocks").rglob("*.data"))
    bs = open_blockstore(repo / "blocks", readonly=False)
    try:
        fd, _ = bs._temp_file(os.fsencode(block.parent))  # the restore's own temp file
        os.close(fd)
    finally:
        bs.close()
    n = 1
    if kind == "fs":
        value = next((repo / "datastore").rglob("*.data"))
        fd, _ = tempfile.mkstemp(prefix=b"." + os.fsencode(value.name) + OWN_TEMP_INFIX,
                                 dir=os.fsencode(value.parent))
        os.close(fd)
        n = 2
    with open_datastore(f"helia:{repo}", readonly=True) as ds:
        audit = ds.audit_files()
        assert (audit.count, audit.temp_files) == (0, n)
    r = cli("backup", f"helia:{repo}", str(tmp_path / "a.tar.gz"), "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)["backup"]["statistics"]
    assert (stats["foreign_files"], stats["temp_files"]) == (0, n)
    assert json.loads(r.stdout)["backup"]["total_keys"] == len(want)
    r = cli("backup", f"helia:{repo}", str(tmp_path / "b.tar.gz"))
    assert r.returncode == 0, r.stderr
    assert (f"{n} temporary files of interrupted writes (the store's writer's or a killed "
            "restore's) hold no records and were left out") in r.stderr
    (block.parent / ".temp-123").write_bytes(b"")  # not a name our writer makes
    with open_datastore(f"helia:{repo}", readonly=True) as ds:
        assert ds.audit_files().count == 1
