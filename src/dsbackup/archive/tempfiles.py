"""Temporary archive names beside the destination, and cleanup of ones left by dead writers.

A writer streams to `.<final name>.tmp-<pid>-<random>` in the destination directory and renames
it into place only when complete, so the final path never holds a partial archive. A temp file
whose writer process no longer exists is a leftover of a killed run; the next run removes it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

log = logging.getLogger(__name__)


def temp_path_for(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp_files(final: Path) -> list[Path]:
    """Temp files for `final` whose writer process is gone."""
    pattern = re.compile(r"^\." + re.escape(final.name) + r"\.tmp-(\d+)-[0-9a-f]+$")
    stale = []
    try:
        names = os.listdir(final.parent)
    except FileNotFoundError:
        return []
    for name in names:
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            stale.append(final.parent / name)
    return stale


def remove_stale_temp_files(final: Path) -> list[Path]:
    removed = []
    for p in stale_temp_files(final):
        try:
            p.unlink()
            removed.append(p)
            log.info("removed leftover temporary file %s from an interrupted run", p)
        except FileNotFoundError:
            pass
    return removed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
