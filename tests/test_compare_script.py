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
    for tool in ("bash", "tar", "gzip", "pigz", "zstd"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bindir / tool)
    env["PATH"] = str(bindir)
    out = tmp_path / "compare.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--runs", "1",
                        "--json", str(out), "--work-dir", str(tmp_path)],
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
        assert rows[(ds, "backup", "isal-1 x1 (ceiling)")]["compressed_bytes"] > 0
    skipped = {(s["dataset"], s["tool"].split(" ")[0]) for s in doc["skipped"]}
    assert {("blocks", "restic"), ("blocks", "borg"), ("small", "tar|igzip")} <= skipped
    assert "skipped: blocks restic (flatfs copy): restic is not installed" in r.stdout
    if shutil.which("pigz"):
        assert ("blocks", "backup", "tar|pigz (flatfs copy)") in rows
    assert not list(tmp_path.glob("dsbackup-compare-*")), "work directory left behind"
