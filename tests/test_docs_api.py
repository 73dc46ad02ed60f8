"""docs/API.md: every ```python block runs as it stands (a fresh interpreter, an empty
temporary directory, this tree's code), so the documented API cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

API_MD = Path(__file__).resolve().parents[1] / "docs" / "API.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", API_MD.read_text(), re.S | re.M)


def test_the_page_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path, cli_env):
    code = BLOCKS[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env,
                          capture_output=True, text=True, timeout=300)
    first = code.strip().splitlines()[0]
    assert proc.returncode == 0, f"example {index} ({first}):\n{proc.stdout}\n{proc.stderr}"
