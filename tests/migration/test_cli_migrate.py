"""`dsbackup migrate` as a subprocess: exit codes, --json, --dry-run, --resume, --rollback."""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import dir_hash, fill, kv_items, records, store_digest

PLAN = """
id = "cli-demo"
version = "1"

[config]
batch_size = 100

[[steps]]
id = "copy"
type = "copy"
filters = { key_prefix = "/a" }
transform = { key_transform = "add_prefix:/new" }

[[steps]]
id = "check"
type = "validate"
filters = { key_prefix = "/a" }
transform = { key_transform = "add_prefix:/new" }

[[rollback]]
id = "undo"
type = "cleanup"
filters = { key_prefix = "/new" }
"""


def setup(tmp_path: Path, plan: str = PLAN) -> tuple[Path, str, str]:
    (tmp_path / "plan.toml").write_text(plan)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, kv_items(600))
    return tmp_path / "plan.toml", src, dst


def test_dry_run_json_then_run_then_rerun_then_rollback(tmp_path: Path, run_cli) -> None:
    plan, src, dst = setup(tmp_path)
    before = dir_hash(tmp_path)
    p = run_cli("migrate", plan, src, dst, "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["schema"] == 1 and out["command"] == "migrate" and out["ok"] and out["dry_run"]
    assert out["steps"][0]["written"] == 200 and out["steps"][0]["sample"]
    assert out["steps"][1]["status"] == "skipped"
    assert dir_hash(tmp_path) == before

    p = run_cli("migrate", plan, src, dst)
    assert p.returncode == 0, p.stderr
    assert "migration cli-demo v1: ok" in p.stderr
    assert len(records(dst)) == 200
    assert p.stdout == ""  # human output goes to stderr

    p = run_cli("migrate", plan, src, dst, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["already_completed"]

    p = run_cli("migrate", plan, src, dst, "--rollback", "--json")
    assert p.returncode == 0, p.stderr
    rb = json.loads(p.stdout)["rollback"]
    assert rb["method"] == "steps" and rb["performed"] and rb["stamp_removed"]
    assert rb["steps"][0]["deleted"] == 200
    assert records(dst) == {}


def test_invalid_plan_exits_2_with_the_place(tmp_path: Path, run_cli) -> None:
    plan, src, dst = setup(tmp_path, PLAN.replace('"add_prefix:/new"', '"frobnicate"', 1))
    p = run_cli("migrate", plan, src, dst, "--json")
    assert p.returncode == 2
    err = json.loads(p.stdout)
    assert err["error"] == "ConfigError" and "steps[0].transform.key_transform[0]" in \
        err["message"]
    assert not (tmp_path / "dst").exists()


def test_failed_validation_exits_2_and_reports_the_rollback(tmp_path: Path, run_cli) -> None:
    plan, src, dst = setup(tmp_path, PLAN + """
[[steps]]
id = "tiny"
type = "validate"
source = "target"
compare = false
transform = { validators = ["size_validator:10"] }
""")
    src_before = store_digest(src)
    p = run_cli("migrate", plan, src, dst, "--json")
    assert p.returncode == 2, p.stderr
    out = json.loads(p.stdout)
    assert not out["ok"] and out["error"] == "ValidationError"
    assert out["steps"][2]["status"] == "failed" and out["steps"][2]["errors"] > 0
    assert out["rollback"]["performed"] and out["rollback"]["steps"][0]["deleted"] == 200
    assert records(dst) == {} and store_digest(src) == src_before


def test_unfinished_journal_needs_resume(tmp_path: Path, run_cli) -> None:
    plan, src, dst = setup(tmp_path)
    journal = tmp_path / "dst.dsmigrate" / "cli-demo.journal"
    journal.parent.mkdir()
    from dsbackup.migration import load_plan
    from dsbackup.migration.journal import Journal

    j = Journal(journal)
    j.append({"t": "begin", "plan": "cli-demo", "version": "1",
              "digest": load_plan(plan).digest()})
    j.close()
    p = run_cli("migrate", plan, src, dst)
    assert p.returncode == 2 and "--resume" in p.stderr
    p = run_cli("migrate", plan, src, dst, "--resume", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["resumed"]
    journal.write_bytes(b"00000000 {}\n")
    (tmp_path / "dst.dsmigrate" / "cli-demo.version").unlink()
    p = run_cli("migrate", plan, src, dst, "--resume")
    assert p.returncode == 2 and "journal" in p.stderr and "corrupt" not in p.stdout
    assert not (tmp_path / "dst.dsmigrate" / "cli-demo.version").exists()


def test_a_store_with_files_no_scan_lists_is_refused(tmp_path: Path, run_cli, go_fixtures) -> None:
    """A Helia blockstore given with the wrong shard function, or a flatfs store with files
    in the wrong shard: the copy listed none of them and said ok, 'records=0', exit 0, as a
    backup (which refuses them) would not. Refused now, naming them and the right URI."""
    import shutil

    blocks = tmp_path / "blocks"
    shutil.copytree(go_fixtures / "helia-js-stores" / "fs" / "blocks", blocks)
    before = dir_hash(blocks)
    plan = tmp_path / "plan.toml"
    plan.write_text('id = "c"\nversion = 1\n[[steps]]\nid = "copy"\ntype = "copy"\n'
                    'source = "source"\ntarget = "target"\n')
    target = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        r = run_cli("migrate", *extra, plan, f"flatfs:{blocks}?shard=next-to-last/2",
                    f"lmdb:{target}")
        assert r.returncode == 2, r.stderr
        assert "6 files do not belong" in r.stderr and "would not be migrated" in r.stderr
        assert "shard=suffix/2" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert not target.exists() and dir_hash(blocks) == before
    r = run_cli("migrate", plan, f"flatfs:{blocks}?shard=suffix/2", f"lmdb:{target}")
    assert r.returncode == 0 and "records=6" in r.stderr, r.stderr
    # in place (the shipped Kubo plan works on TARGET alone): a misnamed block file too
    repo = tmp_path / "ipfs"
    shutil.copytree(go_fixtures / "kubo-v11-repotest", repo)
    for p in [repo, *repo.rglob("*")]:  # (the fixtures may be read-only)
        p.chmod(p.stat().st_mode | 0o200)
    (repo / "blocks" / "3Q" / "lowercase.data").write_bytes(b"x")
    r = run_cli("migrate", "--kubo", "11-to-12", repo)
    assert r.returncode == 2 and "lowercase.data" in r.stderr, r.stderr
    assert (repo / "version").read_text().strip() == "11"
