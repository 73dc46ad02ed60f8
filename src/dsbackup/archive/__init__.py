"""The dsbackup archive format v1 (docs/FORMAT.md): writer, reader, verification and salvage.

Names are imported lazily: a command that only reads (restore, verify) does not pay for the
writer's and salvage's imports at start-up."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ArchiveReader": "dsbackup.archive.reader",
    "ArchiveWriter": "dsbackup.archive.writer",
    "SalvageReport": "dsbackup.archive.salvage",
    "salvage": "dsbackup.archive.salvage",
    "VerifyReport": "dsbackup.archive.verify",
    "verify_archive": "dsbackup.archive.verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dsbackup.archive' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ArchiveReader",
    "ArchiveWriter",
    "SalvageReport",
    "VerifyReport",
    "salvage",
    "verify_archive",
]
