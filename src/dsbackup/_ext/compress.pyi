"""Member bodies (raw deflate), tar headers, bounded raw inflate. See ext/compress.pyx."""

from typing_extensions import Buffer

from dsbackup.errors import ArchiveError, IntegrityError

ENGINES: dict[int, str]
STORED_TAR_PREFIX: bytes

class MemberError(IntegrityError, ValueError): ...
class CompressionError(ArchiveError, RuntimeError): ...

class Body:
    data: bytes | memoryview  # memoryview: compressed into a caller's buffer
    crc32: int
    size: int
    input_len: int
    def __init__(self, data: Buffer, crc32: int, size: int, input_len: int) -> None: ...

def deflate_body(data: Buffer, level: int, pad_to: int = 512) -> Body: ...
def tar_header(name: bytes, size: int, mtime: int) -> bytes: ...
def parse_tar_header(header: Buffer) -> tuple[bytes, int, int]: ...
def inflate_raw(
    buf: Buffer, max_output: int, expected_output: int | None = None
) -> tuple[bytes, int]: ...
def inflate_raw_into(
    buf: Buffer, out: Buffer, expected_output: int | None = None
) -> tuple[int, int]: ...
