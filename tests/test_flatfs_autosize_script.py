"""benchmarks/flatfs_autosize_ab.py and flatfs_sample_cost.py run end to end at a tiny scale
(the same tree as old and new) and report what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--old", SRC,
                           "--new", SRC, *args], capture_output=True, text=True, timeout=600)


def test_tiny_ab_run(tmp_path):
    out = tmp_path / "r.json"
    r = _run("flatfs_autosize_ab.py", "--files", "300", "--sizes", "small", "--rounds", "1",
             "--workers", "1", "--dir", str(tmp_path / "d"), "--json", str(out))
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert set(got["summary"]) == {"full", "new", "new/full old", "new/full new"}
    runs = got["runs"]
    assert {x["chunk_size"] for rs in runs.values() for x in rs} == {
        runs["full/new"][0]["chunk_size"]}  # sampled (~680 for 1-2 KiB), kept by the child
    assert 400 < runs["full/new"][0]["chunk_size"] < 1000
    assert runs["new/new"][0]["stored"] >= 1
    assert not list((tmp_path / "d").glob("autosize-*.tar.gz"))  # parents removed


def test_tiny_sample_cost_run(tmp_path):
    out = tmp_path / "r.json"
    r = _run("flatfs_sample_cost.py", "--files", "300", "--rounds", "1",
             "--dir", str(tmp_path / "d"), "--json", str(out))
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())["runs"]
    assert got["old"][0]["approx_count"] == 300 and got["old"][0]["approx_size"] > 300 * 1000
