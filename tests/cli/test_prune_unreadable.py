"""`dsbackup prune` beside an archive whose parent it cannot read (encrypted, prune has no
key): rule maybe-parent keeps every older archive, and prune says so once — which archive
forces it and how many archives it keeps — on stderr and in --json (``maybe_parent``, and
``forced_by`` on each such decision), --dry-run or not. Before, only each kept line's reason
named it, and --json had no summary."""

from __future__ import annotations

import json

from dsbackup import datasets
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def test_prune_says_which_archive_keeps_how_many(tmp_path, run_cli):
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(200)))
    d = tmp_path / "b"
    d.mkdir()
    names = [f"job_2026010{i}_000000.tar.gz" for i in (1, 2, 3)]
    for n in names:
        BackupManager(BackupConfig(chunk_size=32)).create_backup(f"lmdb:{src}", d / n)
    plain = run_cli("prune", d, "--keep-last", "1", "--dry-run", "--json")
    assert json.loads(plain.stdout)["maybe_parent"] == [] and "maybe-parent" not in plain.stderr
    key = tmp_path / "k.key"
    assert run_cli("keygen", key).returncode == 0
    r = run_cli("backup", f"lmdb:{src}", d / "secret.tar.gz", "--encrypt", "--key-file", key)
    assert r.returncode == 0, r.stderr
    for extra in (["--dry-run"], []):
        r = run_cli("prune", d, "--keep-last", "1", *extra)
        assert r.returncode == 0, r.stderr
        lines = [x for x in r.stderr.splitlines() if "maybe-parent" in x]
        assert len(lines) == 1, r.stderr
        assert "2 archive(s) kept" in lines[0] and "secret.tar.gz" in lines[0], lines
        assert "Traceback" not in r.stderr
    r = run_cli("prune", d, "--keep-last", "1", "--dry-run", "--json")
    out = json.loads(r.stdout)
    assert out["maybe_parent"] == [{"archive": "secret.tar.gz", "kept": 2}]
    forced = [x for x in out["groups"]["job"] if x["rule"] == "maybe-parent"]
    assert {x["id"] for x in forced} == set(names[:2])
    assert all(x["forced_by"] == "secret.tar.gz" for x in forced)
    assert all((d / n).exists() for n in names)
