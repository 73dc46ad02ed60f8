"""benchmarks/scaling.py runs end to end at a tiny scale and reports every worker count."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scaling_tiny(tmp_path, cli_env):
    env = dict(cli_env, DSBACKUP_BENCH_SCALE="0.002", DSBACKUP_BENCH_DIR=str(tmp_path / "data"))
    out = tmp_path / "scaling.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--runs", "1",
                        "--workers", "2,3", "--pigz", "--json", str(out),
                        "--work-dir", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["rounds_done"] == 1 and doc["workers"] == [2, 3] and doc["startup_s"] > 0
    assert doc["schema"] == 2 and doc["ceiling"] == "processes"
    res = {(d["dataset"], d["workers"]): d for d in doc["results"]}
    assert set(res) == {("blocks", 2), ("blocks", 3), ("small", 2), ("small", 3)}
    for d in res.values():
        assert d["backup_s"] > 0 and d["archive_bytes"] > 0
        # the one-thread ceiling runs even when 1 is not among the worker counts
        assert d["of_xN"] > 0 and d["of_N_x1"] > 0
        # the ceiling is N processes; the threads row is kept beside it
        assert d["ceiling_xN_s"] > 0 and d["of_xN_threads"] > 0 and d["isal_speedup"] > 0
        assert d["restore_GB_s"] > 0 and d["verify_GB_s"] > 0
    assert res[("blocks", 2)]["speedup"] == 1.0
    # archives are the same data whatever the worker count
    assert abs(res[("blocks", 2)]["archive_bytes"] - res[("blocks", 3)]["archive_bytes"]) < 100
    if shutil.which("pigz"):
        assert res[("blocks", 2)]["pigz_x_ours"] > 0
    assert "blocks   2" in r.stdout and "small    3" in r.stdout
    assert not list(tmp_path.glob("dsbackup-scaling-*")), "work directory left behind"


def test_ceiling_rows_are_processes(tmp_path):
    """For N > 1 the ceiling row runs compare.py's ``isal-procs`` child (N processes) and the
    threads row the ``isal`` child; for N = 1 one process either way."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scaling
    finally:
        sys.path.pop(0)
    rows = scaling.build_rows("blocks", "lmdb:/x", tmp_path, None, tmp_path, [1, 4],
                              {"ceiling", "threads"})
    kinds = {(r.op, r.workers): r.cmd[3:6] for r in rows if r.op in ("ceiling", "threads")}
    assert kinds == {("ceiling", 1): ["isal", "lmdb:/x", "1"],
                     ("ceiling", 4): ["isal-procs", "lmdb:/x", "4"],
                     ("threads", 4): ["isal", "lmdb:/x", "4"]}
