"""The unit the pipeline hands to the archive writer: a framed, hashed, compressed chunk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.compress import deflate_body
from dsbackup.codec import deflate_level


@dataclass(slots=True)
class BodyView:
    """A compressed tar-entry body whose bytes may live in shared memory.

    ``hold``: set when ``data`` is a worker's slot, which is reused once the consumer's call
    returns; a consumer that reads the bytes later calls ``hold()`` before it returns and the
    function it gets once it is done with them (no consumer of the project does since the
    encrypted writer encrypts a body before ``add_chunk`` returns)."""

    data: Any  # bytes or memoryview
    crc32: int
    size: int
    input_len: int
    hold: Callable[[], Callable[[], None]] | None = None
    # a zstd body's payload length, frame XXH3-64 and kind (dsbackup._ext.compress.Body)
    content_len: int = -1
    xxh3: int = 0
    codec: int = 0

    def __post_init__(self) -> None:
        if self.content_len < 0:
            self.content_len = self.input_len


@dataclass(slots=True)
class ReadyChunk:
    record_count: int
    first_key: bytes
    last_key: bytes
    keys_xxh3: int
    payload_xxh3: int
    raw_bytes: int
    body: Any  # dsbackup._ext.compress.Body or BodyView
    catalog_body: Any = None
    catalog_xxh3: int | None = None


def compress_chunk(chunk: Any, level: int, catalog: bool) -> ReadyChunk:
    """Compress a framed chunk (dsbackup._ext.framing.Chunk). Runs with the GIL released
    inside the native calls, so a thread pool scales across cores."""
    body = chunk.body if getattr(chunk, "body", None) is not None else deflate_body(
        chunk.payload, level)
    cbody = cxxh = None
    if catalog:
        cat = chunk.catalog
        cbody = deflate_body(cat, deflate_level(level))
        cxxh = xxh3_64(cat)
    return ReadyChunk(chunk.record_count, bytes(chunk.first_key), bytes(chunk.last_key),
                      chunk.keys_xxh3, chunk.payload_xxh3, chunk.raw_bytes, body, cbody, cxxh)
