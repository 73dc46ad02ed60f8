"""The dsbackup archive format v1 (docs/FORMAT.md): writer, reader, verification and salvage.

Names are imported lazily: a command that only reads (restore, verify) does not pay for the
writer's and salvage's imports at start-up."""

from __future__ import annotations

from dsbackup._lazy import lazy_names

_LAZY = {
    "ArchiveReader": "dsbackup.archive.reader",
    "ArchiveWriter": "dsbackup.archive.writer",
    "SalvageReport": "dsbackup.archive.salvage",
    "salvage": "dsbackup.archive.salvage",
    "VerifyReport": "dsbackup.archive.verify",
    "verify_archive": "dsbackup.archive.verify",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


__all__ = [
    "ArchiveReader",
    "ArchiveWriter",
    "SalvageReport",
    "VerifyReport",
    "salvage",
    "verify_archive",
]
