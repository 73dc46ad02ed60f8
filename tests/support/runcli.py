"""Running the CLI as a subprocess and looking at trees, for the datastore tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
COPY_PLAN = """id = "copy-test"
version = "1"

[[steps]]
id = "copy"
type = "copy"
source = "source"
target = "target"
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def files(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Relative path -> (mode, content or None for a directory)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = (p.stat().st_mode & 0o777, None if p.is_dir() else p.read_bytes())
    return out


def umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m
