"""benchmarks/flatfs_incremental_memory.py runs end to end at a tiny scale and reports the
ratios it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_reports_rss_and_cpu_ratios(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flatfs_incremental_memory.py"),
                        "--files", "300,2400", "--max-names", "100", "--rounds", "1",
                        "--dir", str(tmp_path / "d"), "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert set(got["ratios"]) == {"cpu buckets/memory 300", "cpu buckets/memory 2400",
                                  "peak RSS memory 2400/300", "peak RSS buckets 2400/300"}
    assert all(v > 0 for v in got["ratios"].values())
    assert set(got["medians"]) == {"300/memory", "300/buckets", "2400/memory", "2400/buckets"}
