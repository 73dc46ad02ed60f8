"""benchmarks/s3.py runs end to end at a tiny scale (moto in its own process) and reports every
row and ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_s3_benchmark_tiny(tmp_path, cli_env):
    out = tmp_path / "s3.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "s3.py"), "--mb", "2",
                        "--rounds", "1", "--json", str(out), "--work-dir", str(tmp_path)],
                       env=cli_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["median_s"]) == {"backup-local", "backup-s3", "local+upload_file",
                                    "upload_file", "download_file", "restore-local",
                                    "restore-s3"}
    assert all(v > 0 for v in doc["ratios"].values())
    assert doc["archive_bytes"] > 0 and "moto" in doc["server"]
    assert "ours_vs_upload_file" in r.stdout
    assert not list(tmp_path.glob("dsbackup-s3bench-*")), "work directory left behind"
