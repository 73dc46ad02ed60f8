"""Copy a key range between two LMDB environments with liblmdb (GIL released). See ext/lmdbcopy.pyx."""

import os
from types import TracebackType

from dsbackup.errors import LmdbOSError

class LmdbCopyError(LmdbOSError): ...

class LmdbCopyNoSpace(LmdbCopyError):
    needed: int
    free: int
    def __init__(self, msg: str, needed: int, free: int) -> None: ...

class LmdbCopier:
    src_path: str
    dst_path: str
    def __init__(
        self,
        src_path: str | os.PathLike[str],
        dst_path: str | os.PathLike[str],
        start: bytes = b"",
        end: bytes | None = None,
        map_size: int = 0,
    ) -> None: ...
    def copy(self, max_records: int = 20000, max_bytes: int = ...) -> tuple[bytes | None, int, int]: ...
    def sync(self) -> None: ...
    @property
    def done(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> LmdbCopier: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
