"""benchmarks/fuzz_archives.py: its archive model writes back valid archives (so a mutation is
the only lie in a fuzzed archive), and a short run finds nothing (soak)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.parametrize("name", ["full-catalog.tar.gz", "incr.tar.gz", "kubo.tar.gz",
                                  "enc-incr.tar.gz"])
def test_model_rewrites_every_member_into_a_valid_archive(tmp_path, name):
    from fuzzlib import model

    from dsbackup.archive.crypto import KeyMaterial, using_key
    from dsbackup.archive.verify import verify_archive

    key = bytes.fromhex("5a" * 32)  # tests/support/golden.py RAW_KEY
    for p in GOLDEN.glob("*.tar.gz"):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    a = model.parse((GOLDEN / name).read_bytes(), key)
    for m in a.members:
        if m.mtype != 9:  # the key header stays (its data key opens the rest)
            m.dirty = True
    out = model.serialize(a)
    assert out != (GOLDEN / name).read_bytes()
    (tmp_path / name).write_bytes(out)
    with using_key(KeyMaterial(key=key)):
        report = verify_archive(tmp_path / name, threads=1)
    assert report.ok, report.problems


@pytest.mark.soak
def test_fuzz_short_run_finds_nothing(tmp_path, cli_env):
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz_archives.py"),
                        "--cases", "40", "--seed", "7", "--work", str(tmp_path / "w"),
                        "--json", str(out)], env=cli_env, capture_output=True, text=True,
                       timeout=1800)
    doc = json.loads(out.read_text())
    assert doc["cases"] == 40 and doc["runs_per_reader"]["verify"] == 40
    real = {k: v for k, v in doc["findings"].items() if not k.startswith(("note:",
                                                                          "backup-parent-"))}
    assert not real, r.stdout[-3000:]
