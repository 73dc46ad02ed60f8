"""Test helpers that look at LMDB files and at this process's memory directly."""

from __future__ import annotations

import os

import lmdb
import pytest


def read_all(path: str | os.PathLike[str]) -> list[tuple[bytes, bytes]]:
    """Every record of the LMDB environment at `path`, read with py-lmdb."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor().iternext())
    finally:
        env.close()


def rss_file_mib() -> float:
    """File-backed resident memory of this process (mapped file pages), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")
