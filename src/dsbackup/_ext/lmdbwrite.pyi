"""Write chunk payloads into an LMDB environment with liblmdb (GIL released). See ext/lmdbwrite.pyx."""

import os
from collections.abc import Iterable
from types import TracebackType

from dsbackup.errors import IntegrityError, InvalidKey, LmdbOSError

class LmdbWriteError(LmdbOSError): ...
class LmdbKeyTooLong(LmdbWriteError, InvalidKey): ...

class LmdbNoSpace(LmdbWriteError):
    needed: int
    free: int
    def __init__(self, msg: str, needed: int, free: int) -> None: ...

class PayloadError(IntegrityError, ValueError):
    index: int
    record: int | None
    offset: int | None
    def __init__(
        self, msg: str, index: int, record: int | None = None, offset: int | None = None
    ) -> None: ...

class LmdbPayloadWriter:
    path: str
    def __init__(self, path: str | os.PathLike[str], *, map_size: int = 0,
                 writemap: bool = True) -> None: ...
    def write(
        self, payloads: Iterable[bytes | bytearray | memoryview], *, append: bool = True, overwrite: bool = True
    ) -> tuple[int, int]: ...
    def sync(self) -> None: ...
    def is_empty(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> LmdbPayloadWriter: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
