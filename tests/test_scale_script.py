"""benchmarks/scale.py runs end to end at a tiny scale; its synthetic archive is a valid paged
index (every §11.3 check passes, only the hole chunks fail verify)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_scale_tiny(tmp_path, cli_env):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--chunks",
                        "20000", "--base", "2000", "--rounds", "1", "--json", "--dir",
                        str(tmp_path)], env=cli_env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert {row["op"] for row in doc["rows"]} == {"open", "ls", "restore"}
    for row in doc["rows"]:
        assert row["small_s"] > 0 and row["large_s"] > 0 and row["large_rss"] > 0
    assert doc["facts"]["large"]["disk"] < doc["facts"]["large"]["size"] / 50  # sparse
    assert not list(tmp_path.iterdir()), "work directory left behind"


def test_synthetic_archive_passes_every_index_check(tmp_path):
    import scale

    from dsbackup.archive.reader import ArchiveReader
    from dsbackup.archive.verify import verify_archive

    # the smallest pages (256 entries) keep it quick: verify reads every 256 KiB hole
    facts = scale.generate(tmp_path / "s.tar.gz", 600, page_entries=256)
    with ArchiveReader(tmp_path / "s.tar.gz") as r:
        assert r.paged and r.chunk_count == 600 and r.index.page_count == 3
        assert r.index.check_layout(r.manifest_end, r.trailer.index_offset) == []
    report = verify_archive(tmp_path / "s.tar.gz", deep=False, threads=1)
    # the index and the two real chunks are fine; every hole fails its member digest
    assert not report.ok and len(report.bad_chunks) == 600 - 2
    assert 0 not in report.bad_chunks and 300 not in report.bad_chunks
    assert not report.bad_parts, report.errors[:3]
    assert facts["prefix"] == "/k/0000000300"
