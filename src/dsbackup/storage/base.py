"""The two interfaces the archive layer reads and writes through (docs/STORAGE.md).

A :class:`Source` is an archive opened for random access; a :class:`Sink` is a new archive
being written, visible at its location only once ``commit`` returns. One module per backend
implements them: ``local`` (files), ``s3`` (S3-compatible object storage), ``stream``
(standard output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dsbackup.storage.location import S3Location

Check = Callable[[Any], None]  # called with a Source (or a temp Path) before commit


class Source(Protocol):
    """Random access to an archive's bytes. Thread-safe: readers share one across threads."""

    location: Path | S3Location | str
    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` (IntegrityError on a short read)."""

    def xxh3(self, offset: int, length: int) -> int:
        """XXH3-64 of the bytes at `offset` (natively hashed where the backend can)."""

    def close(self) -> None: ...

    # Optional, looked up with getattr (the S3 source has them; a file or a spooled stream
    # reads as well without): ``plan(ranges)``, the (offset, length) of the members about
    # to be read, in order, an iterable pulled as the source fetches ahead; and
    # ``read_once(offset, length)``, a read apart from the rest (the manifest, an index
    # page) worth a request of its own rather than a block (docs/STORAGE.md "Reading");
    # ``still_at_location()``, whether the location still holds the archive this source
    # opened (a file: the same inode and size; an object: the same ETag and size, one HEAD).


class Sink(Protocol):
    """A new archive: bytes appended in order; nothing at the location before commit."""

    final: Path | S3Location | str

    def write(self, pieces: Sequence[bytes | memoryview]) -> int:
        """Append `pieces` (one member); returns the number of bytes appended."""

    def commit(self, check: Check | None = None) -> None:
        """Make the archive visible at `final`; `check` runs on the written bytes first
        (a failed check aborts: nothing appears)."""

    def abort(self) -> None:
        """Discard everything written; idempotent, never raises."""
