"""What a remote sink sent, as a Source for the quick check before the upload completes.

Each ``write`` of the archive writer is one member (or the trailer). The record keeps, per
write, its offset, length and the XXH3-64 of its bytes, hashed from the very buffers handed
to the upload; and the bytes of the first few and the last few writes (key header, manifest,
node member; index, summary, trailer). ``verify_archive`` over :class:`SentSource` then checks
the trailer, the index and every member's digest from the index against the bytes sent,
without downloading anything. Memory: a digest per member plus those few members.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from dsbackup._ext.checksum import Xxh3_64, xxh3_64
from dsbackup.errors import IntegrityError

HEAD_WRITES = 3  # key header, manifest, node member (or the first chunk)
TAIL_WRITES = 3  # index, summary, trailer


class SentRecord:
    def __init__(self) -> None:
        self.size = 0
        self.digests: dict[int, tuple[int, int]] = {}  # offset -> (length, xxh3)
        self.head: list[tuple[int, bytes]] = []
        self.tail: deque[tuple[int, bytes]] = deque(maxlen=TAIL_WRITES)

    def add(self, pieces: Sequence[bytes | memoryview], joined: bytes | None = None) -> int:
        """Record one write; `joined` is the pieces' bytes when the caller already has them
        as one object (kept as it is, not copied again)."""
        h = Xxh3_64()
        n = 0
        for p in pieces:
            h.update(p)
            n += len(p)
        self.digests[self.size] = (n, h.intdigest())
        data = joined if joined is not None else b"".join(pieces)
        if len(self.head) < HEAD_WRITES:
            self.head.append((self.size, data))
        self.tail.append((self.size, data))
        self.size += n
        return n


class SentSource:
    """A read-only view of a SentRecord with the Source interface."""

    def __init__(self, record: SentRecord, location: object) -> None:
        self.record = record
        self.location = location
        self.size = record.size

    def _kept(self, offset: int, length: int) -> bytes | None:
        for start, data in (*self.record.head, *self.record.tail):
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start:offset - start + length]
        return None

    def read(self, offset: int, length: int) -> bytes:
        data = self._kept(offset, length)
        if data is None:
            raise IntegrityError(f"{self.location}: the check asked for {length} bytes at "
                                 f"{offset}, which is not a member that was sent")
        return data

    def xxh3(self, offset: int, length: int) -> int:
        got = self.record.digests.get(offset)
        if got is not None and got[0] == length:
            return got[1]
        data = self._kept(offset, length)
        if data is None:
            raise IntegrityError(f"{self.location}: no member of {length} bytes was sent at "
                                 f"offset {offset}")
        return xxh3_64(data)

    def close(self) -> None:
        pass
