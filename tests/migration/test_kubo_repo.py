"""The shipped Kubo 11-to-12 plan on a repo in the layout Kubo 0.8-0.11 writes: version file,
revert log in the format of fs-repo-11-to-12, rollback (ours and from the log), dry run and
refusals that write nothing, a failing validator that leaves the repo as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dsbackup import (
    FilterConfig,
    MigrationConfig,
    MigrationManager,
    MigrationStep,
    TransformationConfig,
)
from dsbackup.migration import register_validator
from dsbackup.migration.shipped import shipped_plan

from .kubo_v11 import (
    b32,
    b32dec,
    block_files,
    expected_files,
    leveldb_records,
    make_v11_repo,
    sha256_mh,
    snapshot,
)

LOG = "11-to-12-cids.txt"


@pytest.fixture
def repo(tmp_path: Path):
    return make_v11_repo(tmp_path / "ipfs")


def migrate(run_cli, *args: object):
    return run_cli("migrate", *map(str, args))


def assert_v12(repo) -> None:
    path = repo.path
    assert (path / "version").read_bytes() == b"12\n"
    files = block_files(path)
    assert files == expected_files(repo.after)
    for rel, data in files.items():
        name = Path(rel).name[:-len(".data")]
        assert rel.split("/")[0] == name[-3:-1]
        assert b32dec(name) == sha256_mh(data)  # named base32(multihash), hashes to it
    assert leveldb_records(path / "datastore") == repo.records


def assert_v11(repo) -> None:
    assert (repo.path / "version").read_bytes() == b"11\n"
    assert block_files(repo.path) == expected_files(repo.blocks)
    assert leveldb_records(repo.path / "datastore") == repo.records


def test_shipped_plan_by_kubo_option(repo, run_cli) -> None:
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["plan_id"] == "kubo-11-to-12"
    assert_v12(repo)
    # the revert log: exactly the re-keyed keys, one "/blocks/<CIDv1 NAME>" per line
    lines = (repo.path / LOG).read_text().splitlines(keepends=True)
    assert sorted(lines) == sorted(f"/blocks/{n}\n" for n in repo.rekeyed)
    assert len(lines) == len(set(lines)) == len(repo.rekeyed)
    assert oct((repo.path / LOG).stat().st_mode & 0o777) == "0o644"
    again = migrate(run_cli, "kubo-11-to-12", f"kubo:{repo.path}", f"kubo:{repo.path}")
    assert again.returncode == 0 and "already migrated" in again.stderr


def test_dry_run_writes_nothing(repo, run_cli) -> None:
    before = snapshot(repo.path.parent)
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"changed={len(repo.rekeyed)}" in res.stderr
    assert snapshot(repo.path.parent) == before


def test_backup_leaves_repo_and_leveldb_alone(repo, run_cli, tmp_path: Path) -> None:
    before = snapshot(repo.path)
    res = run_cli("backup", f"kubo:{repo.path}", tmp_path / "a.dsb")
    assert res.returncode == 0, res.stderr
    res = run_cli("backup", f"leveldb:{repo.path / 'datastore'}", tmp_path / "b.dsb")
    assert res.returncode == 0, res.stderr
    assert snapshot(repo.path) == before


def test_wrong_version_is_refused_before_any_write(repo, run_cli) -> None:
    (repo.path / "version").write_text("10\n")
    before = snapshot(repo.path.parent)
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path)
    assert res.returncode == 2
    assert "version is '10'" in res.stderr and "version 11 to 12" in res.stderr
    assert snapshot(repo.path.parent) == before


def test_rollback_ours_restores_v11(repo, run_cli) -> None:
    assert migrate(run_cli, "--kubo", "11-to-12", repo.path).returncode == 0
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path, "--rollback", "--json")
    assert res.returncode == 0, res.stderr
    rb = json.loads(res.stdout)["rollback"]
    assert rb["method"] == "revert_log" and rb["restored_records"] == len(repo.rekeyed)
    assert_v11(repo)
    assert not (repo.path / LOG).exists() and not (repo.path / (LOG + ".reverted")).exists()
    # and the plan runs again from the start
    assert migrate(run_cli, "--kubo", "11-to-12", repo.path).returncode == 0
    assert_v12(repo)


def test_rollback_from_a_log_kubo_wrote(repo, run_cli) -> None:
    """Kubo's fs-repo-11-to-12 done by hand as its flatfs fast path does it: the log
    first, then each CIDv1 file renamed to its multihash name, then version 12."""
    with open(repo.path / LOG, "a") as f:
        for name in repo.rekeyed:
            f.write(f"/blocks/{name}\n")
    for old, new in repo.rekeyed.items():
        dst = repo.block_file(new)
        dst.parent.mkdir(exist_ok=True)
        repo.block_file(old).rename(dst)
    (repo.path / "version").write_text("12\n")
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path, "--rollback")
    assert res.returncode == 0, res.stderr
    assert (repo.path / "version").read_bytes() == b"11\n"
    files = block_files(repo.path)
    # every block back under its v11 name; Kubo's revert keeps the multihash copies too,
    # and without our record of which existed before, so do we (and say so)
    assert files == expected_files(repo.blocks) | expected_files(
        {new: repo.blocks[old] for old, new in repo.rekeyed.items()})
    assert "as Kubo's revert keeps them" in res.stderr
    assert (repo.path / (LOG + ".reverted")).exists() and not (repo.path / LOG).exists()
    assert leveldb_records(repo.path / "datastore") == repo.records


def test_our_log_reverts_as_kubo_reads_it(repo, run_cli) -> None:
    """What Kubo's revert does with each line of our log (ds.NewKey, BaseNamespace,
    base32 -> CIDv1 -> multihash key under the same parent) finds the migrated block."""
    assert migrate(run_cli, "--kubo", "11-to-12", repo.path).returncode == 0
    for line in (repo.path / LOG).read_text().split("\n"):
        if not line:
            continue
        parent, _, name = line.rpartition("/")
        assert parent == "/blocks"
        raw = b32dec(name)
        assert raw[0] == 1 and raw[1] in (0x55, 0x70)
        mh_name = b32(raw[2:])
        assert repo.block_file(mh_name).read_bytes() == repo.blocks[name]


def test_failing_validator_leaves_repo_as_before(repo, tmp_path: Path) -> None:
    last = "/" + max(repo.after)
    register_validator("fails_on_last_block",
                       lambda key, value: "the last block" if key == last.encode() else None)
    plan = shipped_plan("kubo-11-to-12")
    plan.steps.append(MigrationStep(
        id="check", type="validate", source="target",
        transform=TransformationConfig(validators=["fails_on_last_block",
                                                   "flatfs_key_validator"]),
        filters=FilterConfig(key_prefix="/blocks")))
    files_before = block_files(repo.path)
    dirs_before = {p.name for p in (repo.path / "blocks").iterdir() if p.is_dir()}
    uri = f"kubo:{repo.path}"
    res = MigrationManager(MigrationConfig(batch_size=7)).execute_migration(plan, uri, uri)
    assert not res.success and res.exit_code == 2
    assert any("fails_on_last_block rejected key /blocks" in m and "the last block" in m
               for m in res.error_log), res.error_log
    # flatfs_key_validator saw NAME, not /blocks/NAME: only the planted failure
    assert res.steps[1].errors == 1
    assert res.rollback.method == "revert_log" and res.rollback.performed
    assert res.stamp_path is None
    assert block_files(repo.path) == files_before
    # no shard directory the run created is left (flatfs's own .temp/ aside)
    dirs_after = {p.name for p in (repo.path / "blocks").iterdir() if p.is_dir()}
    assert dirs_after - {".temp"} == dirs_before
    assert_v11(repo)
    assert not (repo.path / LOG).exists()
    assert not list(repo.path.glob(LOG + "*"))


def test_flatfs_key_validator_sees_the_flatfs_name(repo) -> None:
    plan = shipped_plan("kubo-11-to-12")
    plan.steps.append(MigrationStep(
        id="check", type="validate", source="target",
        filters=FilterConfig(key_prefix="/blocks"),
        transform=TransformationConfig(validators=["cid_validator", "flatfs_key_validator"])))
    uri = f"kubo:{repo.path}"
    res = MigrationManager().execute_migration(plan, uri, uri)
    assert res.success, res.error_log
    assert res.steps[1].records == len(repo.after)
    assert_v12(repo)


def test_copy_into_a_new_kubo_repo(repo, tmp_path: Path) -> None:
    plan = shipped_plan("kubo-11-to-12")
    plan.id = "kubo-11-to-12-copy"
    plan.kubo.revert_log = None
    plan.steps = [MigrationStep(id="copy", type="transform", transform=TransformationConfig(
        key_transform="cid_to_multihash"))]
    # a private network's key, a plugin's files: the node's own files, as a backup takes
    # them (only config, datastore_spec, version and keystore/ were copied: the new repo of a
    # private-network node had no swarm.key and joined the public network; hostile review)
    (repo.path / "swarm.key").write_text("/key/swarm/psk/1.0.0/\n/base16/\n" + "ab" * 32 + "\n")
    (repo.path / "swarm.key").chmod(0o600)
    (repo.path / "plugins").mkdir()
    (repo.path / "plugins" / "p.so").write_bytes(b"\x7fELF")
    (repo.path / "repo.lock").write_bytes(b"")
    before = snapshot(repo.path)
    new = tmp_path / "new-ipfs"
    res = MigrationManager().execute_migration(plan, f"kubo:{repo.path}", f"kubo:{new}")
    assert res.success, res.error_log
    assert snapshot(repo.path) == before          # the source: not a byte, mode or mtime
    assert not (repo.path / "blocks" / ".temp").exists()
    for name in ("config", "datastore_spec", "swarm.key", "plugins/p.so"):
        assert (new / name).read_bytes() == (repo.path / name).read_bytes()
    assert (new / "swarm.key").stat().st_mode & 0o777 == 0o600
    assert not (new / "repo.lock").exists()
    assert (new / "version").read_bytes() == b"12\n"
    assert (new / "config").stat().st_mode & 0o777 == 0o600
    assert block_files(new) == expected_files(repo.after)
    assert leveldb_records(new / "datastore") == repo.records


def test_the_in_place_plan_between_two_repos_is_refused(repo, run_cli, tmp_path: Path) -> None:
    """kubo-11-to-12 works on TARGET alone: run from one repo into a new one it ignored the
    source and said ok, leaving an empty repo at version 12 with the old node's identity."""
    before = snapshot(repo.path)
    new = tmp_path / "new-ipfs"
    res = migrate(run_cli, "kubo-11-to-12", f"kubo:{repo.path}", f"kubo:{new}")
    assert res.returncode == 2, res.stderr
    assert "never reads its SOURCE" in res.stderr and "--kubo 11-to-12 REPO" in res.stderr
    assert "Traceback" not in res.stderr
    assert not new.exists() and not (tmp_path / "new-ipfs.dsmigrate").exists()
    assert snapshot(repo.path) == before
    res = migrate(run_cli, "kubo-11-to-12", f"kubo:{repo.path}", f"kubo:{new}", "--dry-run")
    assert res.returncode == 2 and not new.exists()


def test_rollback_with_nothing_to_revert_exits_1(repo, run_cli) -> None:
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path, "--rollback")
    assert res.returncode == 1
    assert "nothing to roll back" in res.stderr
    assert (repo.path / "version").read_bytes() == b"11\n"


def test_interrupted_run_rolls_back_from_staging(repo, tmp_path: Path) -> None:
    """Cancelled in the middle of the rewrite (some old keys deleted, their blocks only in
    the staging namespace): --rollback restores the v11 repo exactly."""
    import threading

    plan = shipped_plan("kubo-11-to-12")
    uri = f"kubo:{repo.path}"
    cancel = threading.Event()
    seen = []

    def progress(ev) -> None:
        seen.append(ev.phase)
        if ev.phase == "delete":
            cancel.set()
    cfg = MigrationConfig(batch_size=3, checkpoint_interval=0)
    res = MigrationManager(cfg).execute_migration(plan, uri, uri, progress=progress,
                                                  cancel=cancel)
    assert res.error == "Cancelled" and "delete" in seen
    assert (repo.path / "version").read_bytes() == b"11\n"
    assert block_files(repo.path) != expected_files(repo.blocks)  # half-way
    rb = MigrationManager().rollback_migration(plan, uri, uri)
    assert rb.success, rb.error_log
    assert_v11(repo)


def test_plan_kubo_table_is_checked(tmp_path: Path) -> None:
    from dsbackup import MigrationPlan
    from dsbackup.errors import ConfigError

    base = {"id": "p", "version": 1, "steps": [{"id": "s", "type": "cleanup"}]}
    for bad, msg in [({"from_version": 11}, "to_version"),
                     ({"from_version": "x", "to_version": 12}, "integer"),
                     ({"from_version": 12, "to_version": 12}, "the same"),
                     ({"from_version": 11, "to_version": 12, "revert_log": "../x"}, "file"),
                     ({"from_version": 11, "to_version": 12, "extra": 1}, "unknown")]:
        with pytest.raises(ConfigError, match=msg):
            MigrationPlan.from_dict({**base, "kubo": bad})
    plan = MigrationPlan.from_dict({**base, "kubo": {"from_version": 11, "to_version": 12}})
    assert plan.kubo.from_version == "11" and "kubo" in plan.to_dict()


def test_kubo_plan_on_a_non_kubo_store_is_refused(tmp_path: Path) -> None:
    from dsbackup.errors import MigrationError

    plan = shipped_plan("kubo-11-to-12")
    uri = f"flatfs:{tmp_path}/b?shard=next-to-last/2"
    with pytest.raises(MigrationError, match="neither source nor target is a kubo"):
        MigrationManager().execute_migration(plan, uri, uri)


def test_repo_fixture_shape(repo) -> None:
    """The generated repo has the v11 shape the tests rely on."""
    assert repo.collision and repo.rekeyed[repo.collision] in repo.blocks
    names = set(repo.blocks)
    assert any(n.startswith("AFK") for n in names) and any(n.startswith("AFY") for n in names)
    assert any(n.startswith("CIQ") for n in names)
    assert any(p.suffix == ".log" and p.stat().st_size
               for p in (repo.path / "datastore").iterdir())


def test_kubo_revert_of_our_run_then_again(repo, run_cli) -> None:
    """Kubo's revert (done by hand as Revert does it: each logged block copied back from
    its multihash key, which is kept; version 11; log renamed) undoes our run; our stamp is
    then stale and says so; --rollback clears it and the plan runs again."""
    assert migrate(run_cli, "--kubo", "11-to-12", repo.path).returncode == 0
    for line in (repo.path / LOG).read_text().splitlines():
        name = line.rpartition("/")[2]
        src = repo.block_file(b32(b32dec(name)[2:]))
        dst = repo.block_file(name)
        dst.parent.mkdir(exist_ok=True)
        dst.write_bytes(src.read_bytes())
    (repo.path / "version").write_text("11\n")
    (repo.path / LOG).rename(repo.path / (LOG + ".reverted"))
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path)
    assert res.returncode == 2 and "reverted by Kubo?" in res.stderr
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path, "--rollback")
    assert res.returncode == 1, res.stderr  # no data to revert: only our stamp removed
    assert "nothing to roll back" in res.stderr and "version stamp removed" in res.stderr
    assert migrate(run_cli, "--kubo", "11-to-12", repo.path).returncode == 0
    assert_v12(repo)


def test_interrupted_run_resumes_with_an_exact_log(repo) -> None:
    import threading

    plan = shipped_plan("kubo-11-to-12")
    uri = f"kubo:{repo.path}"
    cancel = threading.Event()

    def progress(ev) -> None:
        if ev.phase == "delete":
            cancel.set()
    cfg = MigrationConfig(batch_size=3, checkpoint_interval=0)
    first = MigrationManager(cfg).execute_migration(plan, uri, uri, progress=progress,
                                                    cancel=cancel)
    assert first.error == "Cancelled"
    assert (repo.path / "version").read_bytes() == b"11\n"
    done = MigrationManager(MigrationConfig(resume=True)).execute_migration(plan, uri, uri)
    assert done.success and done.resumed, done.error_log
    assert_v12(repo)
    lines = (repo.path / LOG).read_text().splitlines()
    assert sorted(lines) == sorted(f"/blocks/{n}" for n in repo.rekeyed)


def test_copy_into_an_existing_older_repo_is_refused(repo, tmp_path: Path) -> None:
    from dsbackup.errors import MigrationError

    plan = shipped_plan("kubo-11-to-12")
    plan.id = "kubo-copy"
    plan.kubo.revert_log = None
    plan.steps = [MigrationStep(id="copy", type="transform", transform=TransformationConfig(
        key_transform="cid_to_multihash"))]
    other = make_v11_repo(tmp_path / "other", n=6, seed=2)
    before = snapshot(other.path)
    with pytest.raises(MigrationError, match="own records are not migrated"):
        MigrationManager().execute_migration(plan, f"kubo:{repo.path}", f"kubo:{other.path}")
    assert snapshot(other.path) == before
    (other.path / "version").write_text("12\n")   # a repo already at 12 takes the copy
    res = MigrationManager().execute_migration(plan, f"kubo:{repo.path}", f"kubo:{other.path}")
    assert res.success, res.error_log
    assert expected_files(repo.after).items() <= block_files(other.path).items()


def test_kubo_option_usage_errors(repo, run_cli) -> None:
    res = migrate(run_cli, "--kubo", "11-to-12", repo.path, repo.path)
    assert res.returncode == 2 and "give only the repo" in res.stderr
    res = migrate(run_cli, "--kubo", "12-to-13", repo.path)
    assert res.returncode == 2 and "no shipped plan 'kubo-12-to-13'" in res.stderr
    res = migrate(run_cli, "kubo-11-to-12", f"kubo:{repo.path}")
    assert res.returncode == 2 and "PLAN SOURCE TARGET" in res.stderr
    assert (repo.path / "version").read_bytes() == b"11\n"


def _real_v11_repo(tmp_path: Path) -> Path:
    src = Path(__file__).parents[1] / "fixtures" / "kubo-v11-repotest"
    dst = tmp_path / "repotest"
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


def test_the_real_v11_repotest_migrates_and_rolls_back(tmp_path, run_cli) -> None:
    """The repo Kubo wrote for fs-repo-migrations' own test (ipfs/fs-repo-migrations
    fs-repo-11-to-12/migration/repotest: goleveldb tables with CURRENT.bak, 4 CIDv1 and 26
    CIDv0 block files). migration_test.go's checks, by our CLI: after the migration no
    CIDv1 key is left under /blocks and every block sits under its multihash; the revert
    log (setup.go createBackupFile, migration.go: ``fmt.Fprint(buf, sw.Old.String(),
    "\\n")``) lists the old keys; after the revert every original block is back."""
    repo = _real_v11_repo(tmp_path)
    before = block_files(repo)
    records = leveldb_records(repo / "datastore")
    cidv1 = sorted(Path(rel).name[:-5] for rel in before if Path(rel).name.startswith("AFY"))
    assert len(before) == 30 and len(cidv1) == 4 and records
    res = migrate(run_cli, "--kubo", "11-to-12", repo)
    assert res.returncode == 0, res.stderr
    assert (repo / "version").read_bytes() == b"12\n"
    after = block_files(repo)
    by_old = {}
    for rel, data in before.items():
        raw = b32dec(Path(rel).name[:-5])
        mh = raw[2:] if raw[0] == 1 else raw  # CIDv1: version, codec (dag-pb), multihash
        by_old[b32(mh)] = data
    assert {Path(rel).name[:-5]: d for rel, d in after.items()} == by_old
    for rel, data in after.items():
        name = Path(rel).name[:-5]
        assert rel.split("/")[0] == name[-3:-1] and b32dec(name) == sha256_mh(data)
    assert (repo / LOG).read_text().splitlines() == [f"/blocks/{n}" for n in cidv1]
    assert leveldb_records(repo / "datastore") == records
    res = migrate(run_cli, "--kubo", "11-to-12", repo, "--rollback")
    assert res.returncode == 0, res.stderr
    assert (repo / "version").read_bytes() == b"11\n"
    assert block_files(repo) == before


def test_a_new_repo_sharing_the_sources_blocks_is_refused(repo, run_cli, tmp_path: Path) -> None:
    """A repo whose blocks live on another disk (datastore_spec's path absolute, as Kubo
    allows): a copy into a new kubo: repo gave it the same datastore_spec, so its /blocks was
    the source's store, and the copy wrote the re-keyed blocks into the source (exit 0)."""
    blocks = tmp_path / "other-disk" / "blocks"
    blocks.parent.mkdir()
    shutil.move(repo.path / "blocks", blocks)
    spec = json.loads((repo.path / "datastore_spec").read_text())
    spec["mounts"][0]["path"] = str(blocks)
    (repo.path / "datastore_spec").write_text(json.dumps(spec))
    plan = tmp_path / "copy.toml"
    plan.write_text('id = "copy"\nversion = 12\n[kubo]\nfrom_version = 11\nto_version = 12\n'
                    '[[steps]]\nid = "copy"\ntype = "copy"\nsource = "source"\n'
                    'target = "target"\n'
                    'transform = { key_transform = "cid_to_multihash:/blocks" }\n')
    before, blocks_before = snapshot(repo.path), snapshot(blocks)
    new = tmp_path / "new-ipfs"
    res = migrate(run_cli, plan, f"kubo:{repo.path}", f"kubo:{new}")
    assert res.returncode == 2, res.stderr
    assert f"both use {blocks}" in res.stderr and "copied from the source" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert snapshot(blocks) == blocks_before and snapshot(repo.path) == before
    assert not new.exists()
    # a store inside the source repo (its LevelDB): refused too, nothing written
    res = migrate(run_cli, plan, f"kubo:{repo.path}", f"leveldb:{repo.path / 'datastore'}")
    assert res.returncode == 2 and "lies inside" in res.stderr, res.stderr
    assert snapshot(repo.path) == before
    # apart from the source it runs
    res = migrate(run_cli, plan, f"kubo:{repo.path}", f"lmdb:{tmp_path / 'elsewhere'}")
    assert res.returncode == 0, res.stderr
    assert snapshot(blocks) == blocks_before


_COPY_PLAN = ('id = "copy"\nversion = 12\n[kubo]\nfrom_version = 11\nto_version = 12\n'
              '[[steps]]\nid = "copy"\ntype = "copy"\nsource = "source"\ntarget = "target"\n'
              'transform = { key_transform = "cid_to_multihash:/blocks" }\n')
_HOLD_LOCK = ("import fcntl, os, sys\n"
              "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
              "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n")


def test_a_new_repo_refused_before_it_began_is_taken_back(repo, run_cli, tmp_path: Path) -> None:
    """The source's daemon running (repo.lock held): the copy into a new repo was refused
    (exit 4) after NEW got OLD's config, datastore_spec and version 11, and every later run
    refused NEW as 'an existing repo at version 11' (exit 2, 'nothing was changed')."""
    import subprocess
    import sys

    plan = tmp_path / "copy.toml"
    plan.write_text(_COPY_PLAN)
    new = tmp_path / "new-ipfs"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(repo.path / "repo.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = migrate(run_cli, plan, f"kubo:{repo.path}", f"kubo:{new}")
        assert res.returncode == 4, res.stderr
        assert not new.exists()
        new.mkdir()  # an empty directory stays one
        res = migrate(run_cli, plan, f"kubo:{repo.path}", f"kubo:{new}")
        assert res.returncode == 4 and list(new.iterdir()) == [], res.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    res = migrate(run_cli, plan, f"kubo:{repo.path}", f"kubo:{new}")
    assert res.returncode == 0, res.stderr
    assert (new / "version").read_bytes() == b"12\n"
    assert block_files(new) == expected_files(repo.after)


def test_a_new_repo_left_by_a_kill_while_it_was_made_is_taken(repo, run_cli, tmp_path: Path
                                                              ) -> None:
    """Killed while copying the repo's files (before the journal began): NEW holds some of
    OLD's files and nothing else; the rerun refused it ('version is None'), now it goes on."""
    plan = tmp_path / "copy.toml"
    plan.write_text(_COPY_PLAN)
    new = tmp_path / "new-ipfs"
    new.mkdir()
    shutil.copy2(repo.path / "config", new / "config")
    res = migrate(run_cli, plan, f"kubo:{repo.path}", f"kubo:{new}")
    assert res.returncode == 0, res.stderr
    assert block_files(new) == expected_files(repo.after)
    # a file of its own (or another config) is still an existing repo: refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "config").write_text("{}")
    res = migrate(run_cli, plan, f"kubo:{repo.path}", f"kubo:{other}")
    assert res.returncode == 2 and "version is None" in res.stderr, res.stderr
