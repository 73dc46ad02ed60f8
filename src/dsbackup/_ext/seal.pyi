"""AES-256-GCM sealing of archive members in one native pass. See ext/seal.pyx."""

from typing_extensions import Buffer

from dsbackup._ext.compress import Body
from dsbackup.errors import ArchiveError

TAG_LENGTH: int


class SealError(ArchiveError, RuntimeError): ...

class GcmKey:
    def __init__(self, key: Buffer) -> None: ...

def seal_stored(
    key: GcmKey, nonce: Buffer, aad: Buffer, data: Buffer, pad_to: int = 512
) -> tuple[Body, int]: ...
def sealed_size(n: int, pad_to: int = 512) -> int: ...
def seal_into(
    key: GcmKey, nonce: Buffer, aad: Buffer, data: Buffer, out: Buffer, pad_to: int = 512
) -> tuple[int, int, int, int, int]: ...
def data_offsets(n: int) -> list[tuple[int, int]]: ...
def frame_into(
    tag: Buffer, n: int, out: Buffer, pad_to: int = 512
) -> tuple[int, int, int, int, int]: ...
def open_stored(key: GcmKey, nonce: Buffer, aad: Buffer, stored: Buffer) -> bytes | None: ...
