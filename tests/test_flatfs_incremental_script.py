"""benchmarks/flatfs_incremental.py: its block-size distributions name blocks as Kubo does,
and it runs end to end at a tiny scale with several chunk sizes."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _is_kubo_name(name: bytes, value: bytes) -> bool:
    raw = base64.b32decode(name + b"=" * (-len(name) % 8))
    return raw == b"\x12\x20" + hashlib.sha256(value).digest()


def test_blocks_are_named_by_their_multihash():
    import flatfs_incremental as fi

    for sizes in fi.SIZES:
        got = list(fi.blocks(40, 3, sizes))
        assert len(got) == 40
        assert all(_is_kubo_name(name, value) for name, value in got)
        if sizes == "256k":
            assert {len(v) for _, v in got} == {fi.LEAF}
        if sizes == "small":
            assert all(1024 <= len(v) <= 2048 for _, v in got)


def test_small_blocks_unchanged():
    """The default distribution is the one the first runs measured (same seed, same store)."""
    import flatfs_incremental as fi

    assert list(fi.blocks(5, 7, "small")) == list(fi._blocks(5, 7))


def test_kubo_mix():
    import flatfs_incremental as fi

    sizes = [s for _, s in itertools.islice(fi.kubo_sizes(random.Random(1)), 50_000)]
    leaves = [s for s in sizes if s == fi.LEAF]
    assert 0.8 < len(leaves) / len(sizes) < 0.95  # most blocks are full 256 KiB leaves
    assert sum(leaves) / sum(sizes) > 0.95  # and nearly all bytes
    assert min(sizes) >= 1 and max(sizes) == fi.LEAF


def test_tiny_run(tmp_path, cli_env):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flatfs_incremental.py"),
                        "--files", "120", "--sizes", "kubo", "--chunk-size", "auto,3",
                        "--rounds", "1", "--dir", str(tmp_path / "w"), "--json", str(out)],
                       env=cli_env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["du_cache"] is True and doc["chunk_sizes"] == ["auto", "3"]
    arch = doc["archives"]
    assert arch["parent@auto"]["chunk_size"] <= 8  # ~1 MiB of ~230 KiB blocks
    assert arch["parent@3"]["chunk_size"] == 3
    for cs in ("auto", "3"):
        assert arch[f"incremental@{cs}"]["stored"] == 0
        assert 0 < arch[f"new@{cs}"]["stored"] < arch[f"new@{cs}"]["chunks"]
        assert doc["cpu_median_s"][f"full@{cs}"] > 0
        assert len(doc["ratios_per_round"][f"new@{cs}/full@{cs}"]) == 1
    assert arch["find"]["files"] >= 120
    # the new blocks are gone again, the temporary archives too
    names = {p.name for p in (tmp_path / "w").iterdir()}
    assert not names & {"full.tar.gz", "incremental.tar.gz", "new.tar.gz"}
