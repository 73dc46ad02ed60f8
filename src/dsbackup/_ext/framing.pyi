"""Chunk payloads and content-defined chunking (docs/FORMAT.md §4). See ext/framing.pyx."""

from collections.abc import Sequence

from typing_extensions import Buffer

from dsbackup._ext.compress import Body
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

class Chunk:
    payload: bytes  # made on first access; payload_len is known without it
    payload_len: int
    record_count: int
    first_key: bytes
    last_key: bytes
    keys_xxh3: int
    payload_xxh3: int
    raw_bytes: int
    catalog: bytes | None
    body: Body | None

class KeyMatcher:
    patterns: tuple[bytes, ...]
    def __init__(self, patterns: Sequence[str | bytes]) -> None: ...
    def match(self, key: Buffer) -> bool: ...

class Chunker:
    def __init__(
        self,
        chunk_size: int,
        chunk_max_bytes: int,
        exclude: KeyMatcher | None = None,
        catalog: bool = False,
    ) -> None: ...
    @property
    def records(self) -> int: ...
    @property
    def raw_bytes(self) -> int: ...
    @property
    def excluded_records(self) -> int: ...
    @property
    def excluded_bytes(self) -> int: ...
    def add(self, keys: Sequence[bytes], values: Sequence[bytes]) -> list[Chunk]: ...
    def add_compress(
        self, keys: Sequence[bytes], values: Sequence[bytes], level: int
    ) -> list[Chunk]: ...
    def finish(self) -> Chunk | None: ...
    def finish_compress(self, level: int) -> Chunk | None: ...

Plan = tuple[bytes, bytes, int, int, int, int]

class KeyPlanner:
    def __init__(
        self, chunk_size: int, chunk_max_bytes: int, exclude: KeyMatcher | None = None
    ) -> None: ...
    @property
    def records(self) -> int: ...
    @property
    def raw_bytes(self) -> int: ...
    @property
    def excluded_records(self) -> int: ...
    @property
    def excluded_bytes(self) -> int: ...
    def add(self, keys: Sequence[bytes], sizes: Sequence[int]) -> list[Plan]: ...
    def finish(self) -> Plan | None: ...

def encode_records(keys: Sequence[bytes], values: Sequence[bytes]) -> bytes: ...
def decode_records(
    payload: Buffer, expect_count: int | None = None
) -> tuple[list[bytes], list[bytes]]: ...
def decode_keys_sizes(payload: Buffer) -> tuple[list[bytes], list[int]]: ...
def scan_payload(payload: Buffer) -> PayloadInfo: ...
def is_boundary(key: Buffer, chunk_size: int) -> bool: ...
