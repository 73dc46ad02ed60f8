"""benchmarks/compare.py runs end to end at a tiny scale, and says which rows it skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compare_tiny(tmp_path, cli_env):
    env = dict(cli_env, DSBACKUP_BENCH_SCALE="0.002", DSBACKUP_BENCH_DIR=str(tmp_path / "data"))
    # hide restic/borg/igzip even where installed, so the skip path is always exercised
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "tar", "gzip", "pigz", "zstd", "find", "sync"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bindir / tool)
    env["PATH"] = str(bindir)
    out = tmp_path / "compare.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--runs", "1",
                        "--workers", "2", "--json", str(out), "--work-dir", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = {(d["dataset"], d["op"], d["tool"]): d for d in doc["rows"]}
    for ds in ("blocks", "small"):
        for op in ("backup", "restore", "verify"):
            ours = [d for (dd, o, _), d in rows.items() if dd == ds and o == op and d["ours"]]
            assert len(ours) == 1 and ours[0]["x_ours"] == 1.0 and ours[0]["seconds"] > 0
        seed = rows[(ds, "backup", "seed json+tar.gz-6")]
        assert seed["compressed_bytes"] > 0 and seed["peak_rss_mib"] > 0 and seed["x_ours"] > 0
        x1 = rows[(ds, "backup", "isal-1 x1 (ceiling)")]["compressed_bytes"]
        # the same pieces compressed in 2 threads or 2 processes: the same bytes out
        assert x1 > 0
        assert rows[(ds, "backup", "isal-1 x2 threads (ceiling)")]["compressed_bytes"] == x1
        assert rows[(ds, "backup", "isal-1 in 2 processes (ceiling)")]["compressed_bytes"] == x1
        ceil = doc["ceiling"][ds]
        assert set(ceil) == {"ours_seconds", "x1", "threads", "processes"}
        assert ceil["processes"]["of_ceiling"] > 0
        assert len(ceil["processes"]["of_ceiling_per_round"]) == 1
    skipped = {(s["dataset"], s["tool"].split(" ")[0]) for s in doc["skipped"]}
    assert {("blocks", "restic"), ("blocks", "borg"), ("small", "tar|igzip")} <= skipped
    assert "skipped: blocks restic (flatfs copy): restic is not installed" in r.stdout
    assert "blocks backup: ours = " in r.stdout and "of isal-1 in 2 processes" in r.stdout
    assert doc["durable"] is True
    if shutil.which("pigz"):
        assert ("blocks", "backup", "tar|pigz (flatfs copy)") in rows
    # files to files, as tar does: our backup of the flatfs copy, restored into a new flatfs
    for op in ("backup", "restore"):
        flat = rows[("blocks", op, "dsbackup (flatfs copy)")]
        assert flat["seconds"] > 0 and not flat["ours"] and flat["error"] is None
    assert ("small", "restore", "dsbackup (LMDB dir)") not in rows
    assert not list(tmp_path.glob("dsbackup-compare-*")), "work directory left behind"


def test_every_row_reads_its_input_warm(tmp_path):
    """Each row names what it reads (the store, the file-level tools' copy, or the archive),
    and that is read into the page cache before the row runs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare
    finally:
        sys.path.pop(0)
    src, copy = tmp_path / "store", tmp_path / "copy"
    rows, _ = compare.build_rows("blocks", f"lmdb:{src}", src, 1, copy, "flatfs copy",
                                 tmp_path, 2, {"backup", "restore", "verify"}, flatfs_raw=1)
    by = {(r.op, r.tool): r.inputs for r in rows}
    assert by[("backup", "dsbackup (flatfs copy)")] == (copy,)
    assert by[("restore", "dsbackup (flatfs copy)")] == (tmp_path / "blocks" / "ours-flatfs.tar.gz",)
    assert all(r.inputs for r in rows), [(r.op, r.tool) for r in rows if not r.inputs]
    assert by[("backup", "dsbackup")] == (src,)
    assert by[("backup", "seed json+tar.gz-6")] == (src,)
    arc = tmp_path / "blocks" / "ours.tar.gz"
    assert by[("restore", "dsbackup")] == by[("verify", "dsbackup (deep)")] == (arc,)
    assert by[("verify", "gzip -t (seed archive)")] == (tmp_path / "blocks" / "seed.tar.gz",)
    for (op, tool), inputs in by.items():
        if tool.startswith(("tar|", "restic", "borg")) and op == "backup":
            assert inputs == (copy,)
    copy.mkdir()
    (copy / "sub").mkdir()
    (copy / "sub" / "a").write_bytes(b"x" * 100)
    compare._warm((copy, copy / "sub" / "a"))  # directories and files alike


def test_every_writing_row_ends_durable(tmp_path):
    """Each shell row that writes (backup archives and repositories, restored trees) fsyncs
    everything it wrote, inside the timed command; restic and borg restore too."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare
    finally:
        sys.path.pop(0)
    src, copy = tmp_path / "store", tmp_path / "copy"
    rows, skips = compare.build_rows("small", f"lmdb:{src}", src, 1, copy, "LMDB dir",
                                     tmp_path, 2, {"backup", "restore", "verify"})
    shell = [r for r in rows if r.cmd[0] == "bash" and r.op in ("backup", "restore")]
    assert shell
    for r in shell:
        assert r.cmd[-1].endswith(compare._durable(r.output)), (r.op, r.tool, r.cmd[-1])
    tools = {(r.op, r.tool.split(" ")[0]) for r in shell} | {
        (op, s.tool.split(" ")[0]) for s in skips for op in ("backup", "restore")}
    assert {("restore", "restic"), ("restore", "borg")} <= tools


def test_durable_step_fsyncs_a_tree(tmp_path):
    """The durable step runs (coreutils sync on files and directories) and fails loudly on a
    missing path."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare
    finally:
        sys.path.pop(0)
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "f").write_bytes(b"x")
    ok = subprocess.run(compare._shell(compare._durable(out)), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(compare._shell(compare._durable(tmp_path / "missing")),
                         capture_output=True, text=True)
    assert bad.returncode != 0


def test_flatfs_copy_holds_only_flatfs_files(tmp_path):
    """The cached flatfs copy keeps its completion marker beside it, so dsbackup backs it up
    without --skip-foreign; a marker left inside by an earlier version is moved, not rebuilt."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import benchdata
    finally:
        sys.path.pop(0)
    d = benchdata.blocks_flatfs(count=4, root=tmp_path)
    assert d.records == 4
    assert not list(d.path.glob(".dsbackup*"))
    outer = tmp_path / f".{d.path.name}.complete"
    assert outer.is_file()
    (d.path / ".dsbackup-bench-complete").write_text(outer.read_text())
    outer.unlink()
    before = sorted(p.stat().st_mtime_ns for p in d.path.rglob("*.data"))
    again = benchdata.blocks_flatfs(count=4, root=tmp_path)
    assert again.records == 4 and outer.is_file()
    assert not (d.path / ".dsbackup-bench-complete").exists()
    assert sorted(p.stat().st_mtime_ns for p in d.path.rglob("*.data")) == before
