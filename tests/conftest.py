"""Shared test helpers (small and additive: other branches add their own fixtures here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]


def shared_fixtures_dir() -> Path | None:
    """Real data written by other tools (Kubo repo, Go path.Clean vectors).

    Looked up in $DSBACKUP_FIXTURES, tests/fixtures, then ../shared/fixtures."""
    env = os.environ.get("DSBACKUP_FIXTURES")
    for cand in ([Path(env)] if env else []) + [
        _ROOT / "tests" / "fixtures",
        _ROOT.parent / "shared" / "fixtures",
        Path("/work/shared/fixtures"),
    ]:
        if (cand / "go-path-clean.tsv").is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def go_fixtures() -> Path:
    d = shared_fixtures_dir()
    if d is None:
        pytest.skip("shared fixtures (go-path-clean.tsv, kubo-v16-repo) not found")
    return d
