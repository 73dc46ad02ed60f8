"""LMDB range scans into finished chunks (liblmdb, worker processes). See ext/lmdbscan.pyx."""

import os
from collections.abc import Iterator
from types import TracebackType

from dsbackup._ext.framing import Chunk, KeyMatcher
from dsbackup._ext.lmdbregistry import DoubleOpenError as DoubleOpenError
from dsbackup._ext.lmdbregistry import open_environments as open_environments
from dsbackup._ext.lmdbregistry import register_foreign_open as register_foreign_open
from dsbackup._ext.lmdbregistry import unregister_foreign_open as unregister_foreign_open
from dsbackup.errors import DatastoreError

class LmdbError(DatastoreError, OSError): ...

class LmdbRangeScanner:
    path: str
    def __init__(
        self,
        path: str | os.PathLike[str],
        start: bytes = b"",
        end: bytes | None = None,
        *,
        chunk_size: int,
        chunk_max_bytes: int,
        level: int,
        exclude: KeyMatcher | None = None,
        catalog: bool = False,
        subdir: bool = True,
        db_name: bytes | None = None,
        readahead: bool = True,
    ) -> None: ...
    @property
    def txn_id(self) -> int: ...
    @property
    def records(self) -> int: ...
    @property
    def raw_bytes(self) -> int: ...
    @property
    def excluded_records(self) -> int: ...
    @property
    def excluded_bytes(self) -> int: ...
    def next_chunk(self) -> Chunk | None: ...
    def reset(self, start: bytes, end: bytes | None = None) -> None: ...
    def plan_chunks(
        self, max_plans: int = 4096
    ) -> list[tuple[bytes, bytes, int, int, int, int]]: ...
    def plan_from(self, start: bytes) -> None: ...
    def stripe_hints(self, min_records: int, min_bytes: int) -> list[bytes] | None: ...
    def snap(self, key: bytes) -> bytes | None: ...
    @property
    def planned_excluded(self) -> tuple[int, int]: ...
    def __iter__(self) -> Iterator[Chunk]: ...
    def close(self) -> None: ...
    def __enter__(self) -> LmdbRangeScanner: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
