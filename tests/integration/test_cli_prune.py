"""`dsbackup prune` keeps the parents of kept archives whatever their name (issue #20 item 16),
resolves twins by content identity, and says why each ancestor is kept (text, --dry-run,
--json)."""

from __future__ import annotations

import json
from pathlib import Path

from dsbackup import datasets
from dsbackup.datastores import open_datastore


def _store(tmp_path: Path) -> Path:
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(1500)))
    return src


def _change(src: Path, n: int) -> None:
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/%05d" % (n * 97), b"changed %d" % n)


def test_parent_with_another_name_is_kept(tmp_path, run_cli):
    src = _store(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    weekly1, daily, weekly2 = (d / "weekly_20260105_000000.tar.gz",
                               d / "daily_20260106_000000.tar.gz",
                               d / "weekly_20260112_000000.tar.gz")
    assert run_cli("backup", f"lmdb:{src}", weekly1, "--chunk-size", "32").returncode == 0
    _change(src, 1)
    assert run_cli("backup", f"lmdb:{src}", daily, "--parent", weekly1).returncode == 0
    _change(src, 2)
    assert run_cli("backup", f"lmdb:{src}", weekly2, "--chunk-size", "32").returncode == 0

    r = run_cli("prune", d, "--keep-last", "1", "--dry-run")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if weekly1.name in ln)
    assert line.startswith("keep") and f"parent of kept incremental backup {daily.name}" in line
    r = run_cli("prune", d, "--keep-last", "1", "--dry-run", "--json")
    out = json.loads(r.stdout)
    w = {x["id"]: x for x in out["groups"]["weekly"]}
    assert w[weekly1.name]["keep"] and w[weekly1.name]["rule"] == "parent"
    assert daily.name in w[weekly1.name]["reason"]

    r = run_cli("prune", d, "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == []
    assert weekly1.exists()
    r = run_cli("restore", daily, f"lmdb:{tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr
    # only the weekly group is pruned: the daily (another name) still protects its parent
    r = run_cli("prune", d, "--keep-last", "1", "--name", "weekly", "--json")
    assert r.returncode == 0 and weekly1.exists()
    daily.unlink()
    r = run_cli("prune", d, "--keep-last", "1", "--json")
    assert json.loads(r.stdout)["deleted"] == [str(weekly1)]


def test_twins_resolved_by_the_archive_the_child_references(tmp_path, run_cli):
    """Two full backups of the same state share a fingerprint; the child references the one
    with a key catalog. prune keeps that one, not the newest twin."""
    src = _store(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    with_cat = d / "full_20260101_000000.tar.gz"
    twin = d / "full_20260102_000000.tar.gz"
    child = d / "inc_20260103_000000.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", with_cat, "--chunk-size", "32",
                   "--include-metadata").returncode == 0
    assert run_cli("backup", f"lmdb:{src}", twin, "--chunk-size", "32").returncode == 0
    a = json.loads(run_cli("inspect", with_cat, "--json").stdout)
    b = json.loads(run_cli("inspect", twin, "--json").stdout)
    assert a["backup"]["fingerprint"] == b["backup"]["fingerprint"]  # twins
    _change(src, 3)
    r = run_cli("backup", f"lmdb:{src}", child, "--parent", with_cat, "--include-metadata")
    assert r.returncode == 0, r.stderr
    r = run_cli("prune", d, "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    decisions = {x["id"]: x for x in out["groups"]["full"]}
    assert decisions[with_cat.name]["rule"] == "parent"
    assert decisions[twin.name]["rule"] == "last"
    assert with_cat.exists() and twin.exists()
    r = run_cli("ls", child)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 1500


def test_an_encrypted_incremental_without_its_key_keeps_every_older_archive(tmp_path, run_cli):
    """prune cannot read the parent of an encrypted archive without its key: before, it
    deleted the plain full backup an encrypted incremental of another name was made on (exit
    0), and the incremental could no longer be restored."""
    src = _store(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    key = tmp_path / "pass"
    key.write_text("secret\n")
    key.chmod(0o600)
    full1, inc, full2 = (d / "x_20260105_000000.tar.gz", d / "y_20260106_000000.tar.gz",
                         d / "x_20260107_000000.tar.gz")
    assert run_cli("backup", f"lmdb:{src}", full1).returncode == 0
    _change(src, 1)
    r = run_cli("backup", f"lmdb:{src}", inc, "--parent", full1, "--encrypt",
                "--passphrase-file", key)
    assert r.returncode == 0, r.stderr
    _change(src, 2)
    assert run_cli("backup", f"lmdb:{src}", full2).returncode == 0

    r = run_cli("prune", d, "--keep-last", "1", "--name", "x", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["deleted"] == []
    kept = {x["id"]: x for x in out["groups"]["x"]}
    assert kept[full1.name]["rule"] == "maybe-parent" and inc.name in kept[full1.name]["reason"]
    assert full1.exists()
    r = run_cli("restore", inc, f"lmdb:{tmp_path / 'r'}", "--passphrase-file", key)
    assert r.returncode == 0, r.stderr
    # an archive newer than the encrypted one cannot be its parent: pruned as before
    _change(src, 3)
    full3 = d / "x_20260108_000000.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", full3).returncode == 0
    r = run_cli("prune", d, "--keep-last", "1", "--name", "x", "--json")
    assert json.loads(r.stdout)["deleted"] == [str(full2)]
