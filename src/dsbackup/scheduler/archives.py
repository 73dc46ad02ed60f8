"""Archive names of scheduled backups: ``<name>_<YYYYmmdd_HHMMSS>.tar.gz`` (UTC)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dsbackup.storage import exists
from dsbackup.storage import list_archives as storage_list

_PATTERN = re.compile(r"(?P<name>.+)_(?P<ts>\d{8}_\d{6})\.tar\.gz")
_TS = "%Y%m%d_%H%M%S"
_ONE_SECOND = timedelta(seconds=1)


def archive_name(name: str, when: datetime) -> str:
    return f"{name}_{when.astimezone(timezone.utc).strftime(_TS)}.tar.gz"


def parse_archive_name(filename: str) -> tuple[str, datetime] | None:
    """``("ipfs", 2026-01-02 03:04:05 UTC)`` for ``ipfs_20260102_030405.tar.gz``, else None."""
    m = _PATTERN.fullmatch(filename)
    if not m:
        return None
    try:
        ts = datetime.strptime(m.group("ts"), _TS).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return m.group("name"), ts


def free_archive_path(directory: Path, name: str, when: datetime) -> Path:
    """A path for a new archive; a second run within the same second gets the next second."""
    candidate = when.astimezone(timezone.utc).replace(microsecond=0)
    while True:
        path = directory / archive_name(name, candidate)
        if not exists(path):  # a file, or an object (HEAD)
            return path
        candidate += _ONE_SECOND


def list_archives(directory: Path, name: str | None = None) -> list[tuple[Path, str, datetime]]:
    """Scheduled-backup archives in ``directory`` or under an S3 prefix (an S3Location;
    dsbackup.storage), optionally of one name, oldest first."""
    out = []
    if isinstance(directory, Path) and not directory.is_dir():
        return out
    for entry in storage_list(directory):
        parsed = parse_archive_name(entry.name)
        if parsed and (name is None or parsed[0] == name):
            out.append((entry, parsed[0], parsed[1]))
    return sorted(out, key=lambda t: (t[2], t[0].name))

