"""The dsbackup archive format v1 (docs/FORMAT.md): writer, reader, verification and salvage."""

from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.salvage import SalvageReport, salvage
from dsbackup.archive.verify import VerifyReport, verify_archive
from dsbackup.archive.writer import ArchiveWriter

__all__ = [
    "ArchiveReader",
    "ArchiveWriter",
    "SalvageReport",
    "VerifyReport",
    "salvage",
    "verify_archive",
]
