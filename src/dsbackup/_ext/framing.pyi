"""Chunk payloads and content-defined chunking (docs/FORMAT.md §4). See ext/framing.pyx."""

from collections.abc import Sequence

from typing_extensions import Buffer

from dsbackup._ext.compress import Body
from dsbackup._ext.keymatch import KeyMatcher as KeyMatcher
from dsbackup._ext.payload import FramingError as FramingError
from dsbackup._ext.payload import PayloadInfo as PayloadInfo
from dsbackup._ext.payload import decode_keys_sizes as decode_keys_sizes
from dsbackup._ext.payload import decode_records as decode_records
from dsbackup._ext.payload import encode_records as encode_records
from dsbackup._ext.payload import scan_payload as scan_payload
from dsbackup._ext.planner import KeyPlanner as KeyPlanner
from dsbackup._ext.planner import Plan as Plan

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

def is_boundary(key: Buffer, chunk_size: int) -> bool: ...
