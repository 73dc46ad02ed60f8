"""BackupConfig refuses values no backup could run with, as a ConfigError (exit 2)."""

from __future__ import annotations

import pytest

from dsbackup.engine.config import MAX_CHUNK_SIZE, BackupConfig
from dsbackup.errors import ConfigError


@pytest.mark.parametrize("kw", [
    {"chunk_size": 0}, {"chunk_size": MAX_CHUNK_SIZE + 1}, {"chunk_size": 10 ** 20},
    {"timeout": 0}, {"timeout": -1.0}, {"timeout": float("nan")}, {"timeout": float("inf")},
    {"timeout": 1e300}, {"timeout": "60"}, {"workers": 0}, {"compression_level": 12},
    {"chunk_max_bytes": 10 ** 20},
], ids=repr)
def test_refused(kw):
    with pytest.raises(ConfigError):
        BackupConfig(**kw)


@pytest.mark.parametrize("kw", [{"chunk_size": 1}, {"chunk_size": MAX_CHUNK_SIZE},
                                {"timeout": 0.5}, {"timeout": 86400 * 365}])
def test_accepted(kw):
    BackupConfig(**kw)
