"""verify / ls / inspect of Go-tool archives through the CLI (dsbackup.compat.gocompat)."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from go_archives import go_archive, tar_bytes, write_gz

SRC = Path(__file__).resolve().parents[2] / "src"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def records(n: int = 250) -> list[tuple[str, bytes]]:
    rnd = random.Random(5)
    return [(f"/blocks/CIQ{i:05d}", rnd.randbytes(rnd.randint(0, 300))) for i in range(n)]


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    recs = records()
    path = tmp_path / "go.tar.gz"
    members = go_archive(path, recs, chunk_size=40)  # 6 full chunks and a repeated chunk_6
    return path, recs, members


def test_intact_archive_verifies_lists_and_inspects(archive):
    path, recs, members = archive
    r = cli("verify", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == "go" and out["ok"] and out["records"] == len(recs)
    assert out["chunks"] == len(members) - 1 == 7
    r = cli("ls", str(path))
    assert r.returncode == 0 and r.stdout.splitlines() == sorted(k for k, _ in recs)
    r = cli("ls", "-l", str(path), "--prefix", "/blocks")
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows == [[str(len(v)), k] for k, v in sorted(recs)]
    r = cli("ls", "--json", str(path))
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["format"] == "go" and len(lines) == len(recs) + 1
    r = cli("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == "go" and out["backup"]["total_keys"] == len(recs)
    assert out["backup"]["chunks"] == 7
    r = cli("inspect", str(path))
    assert r.returncode == 0 and "go (docs/GOFORMAT.md)" in r.stdout


def test_restore_summary_counts_chunk_members(archive, tmp_path):
    path, recs, _ = archive
    r = cli("restore", str(path), f"lmdb:{tmp_path / 'r'}", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restore"]["chunks"] == 7


def _rewrite(path: Path, members: list[tuple[str, bytes]]) -> None:
    write_gz(path, tar_bytes(members))


def test_bit_flip_inside_a_chunk_body_names_the_member(archive):
    path, _, members = archive
    name, body = members[2]
    i = body.index(b'":"') + 5  # inside the first base64 value
    bad = body[:i] + bytes([body[i] ^ 0x80]) + body[i + 1:]
    _rewrite(path, [*members[:2], (name, bad), *members[3:]])
    r = cli("verify", str(path))
    assert r.returncode == 3 and name in r.stderr and "DAMAGED" in r.stderr
    r = cli("verify", str(path), "--json")
    assert json.loads(r.stdout)["ok"] is False


def test_dropped_member_is_damage(archive):
    path, _, members = archive
    _rewrite(path, members[:3] + members[4:])
    r = cli("verify", str(path))
    assert r.returncode == 3 and "metadata.json" in r.stderr and "missing" in r.stderr


def test_truncation_names_the_member(tmp_path):
    path = tmp_path / "big.tar.gz"
    go_archive(path, records(3000), chunk_size=100)  # ~600 KiB: cut well inside the stream
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    r = cli("verify", str(path))
    assert r.returncode == 3 and "chunk_" in r.stderr and "Traceback" not in r.stderr
    raw = gzip.decompress(data)
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a tar cut mid-member
    r = cli("verify", str(path))
    assert r.returncode == 3 and "chunk_" in r.stderr
