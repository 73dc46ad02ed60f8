"""Chunk payloads (docs/FORMAT.md §4): encode, decode, validate. See ext/payload.pyx."""

from collections.abc import Sequence

from typing_extensions import Buffer

from dsbackup.errors import IntegrityError

class FramingError(IntegrityError, ValueError):
    record: int | None
    offset: int | None
    def __init__(
        self, message: str, record: int | None = None, offset: int | None = None
    ) -> None: ...

class PayloadInfo:
    record_count: int
    first_key: bytes
    last_key: bytes
    keys_xxh3: int
    raw_bytes: int

def encode_records(keys: Sequence[bytes], values: Sequence[bytes]) -> bytes: ...
def decode_records(
    payload: Buffer, expect_count: int | None = None
) -> tuple[list[bytes], list[bytes]]: ...
def decode_keys_sizes(payload: Buffer) -> tuple[list[bytes], list[int]]: ...
def scan_payload(payload: Buffer) -> PayloadInfo: ...
