"""What a remote sink sent, as a Source for the quick check before the upload completes.

Each ``write`` of the archive writer is one member (or the trailer). The record keeps, per
write, a fixed 24-byte record: its offset, its length and either the XXH3-64 of its bytes
(hashed from the very buffers handed to the upload) or where its bytes are kept. Chunk and
catalog members (the bulk: recognised by the member type in their gzip header's ``DS``
subfield, docs/FORMAT.md §2.1) are hashed only; the bytes of every other write (key header,
manifest, node, index pages, index, summary, trailer) are kept, as the check reads them.
``verify_archive`` over :class:`SentSource` then checks the trailer, the index (and its
pages) and every member's digest from the index against the bytes sent, without
downloading anything.

Memory does not grow with the archive: records and kept bytes go to two unnamed temporary
files (``$TMPDIR``; in memory while small: 1 MiB of records, 4 MiB of bytes), gone when
closed or when the process dies. The check walks members in offset order: a window of
records read back at a time and a cursor make a lookup O(1) amortized, a bisect over the
file the fallback. Local temporary space: 24 bytes per member + the kept members' bytes.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections.abc import Sequence
from typing import IO, Any

from dsbackup._ext.checksum import Xxh3_64, xxh3_64
from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.errors import ArchiveError, IntegrityError

REC = struct.Struct("<QQQ")  # offset, length | KEPT, XXH3-64 (or the kept bytes' position)
KEPT = 1 << 63
_OFF = struct.Struct("<Q")
_FLUSH = 2730 * REC.size  # records buffered before they go to the spool (64 KiB)
WINDOW = 4096  # records read back at once by the check (96 KiB)
RECORDS_IN_MEMORY = 1 << 20  # bytes of records held in memory before spilling to $TMPDIR
KEPT_IN_MEMORY = 4 << 20  # bytes of kept members held in memory before spilling
IN_MEMORY_ENV = "DSBACKUP_TEST_SENT_IN_MEMORY"  # tests: both limits, in bytes (spill early)
# docs/FORMAT.md §2.1 (archive.format sits above storage; tests check these agree): gzip ID1
# ID2 CM, FLG with FEXTRA; 'DS' at 12; the subfield from 16, its byte 1 the member type
GZIP_MAGIC = b"\x1f\x8b\x08"
FEXTRA = 4
SUBFIELD_ID = b"DS"
TYPE_AT = 17
HASHED_TYPES = (2, 6)  # chunk, catalog: hashed only; every other write is kept


def _member_type(pieces: Sequence[bytes | memoryview]) -> int | None:
    """The member type in the write's gzip header, None when it is not a member of ours."""
    head = pieces[0] if pieces else b""  # the writer's: the member head, whole
    if len(head) <= TYPE_AT:
        head = b"".join(bytes(p[:TYPE_AT + 1]) for p in pieces)
        if len(head) <= TYPE_AT:
            return None
    if head[:3] != GZIP_MAGIC or not head[3] & FEXTRA or head[12:14] != SUBFIELD_ID:
        return None
    return head[TYPE_AT]


class SentRecord:
    """Offsets, lengths and digests of what was sent, and the bytes the check reads."""

    def __init__(self, location: object = "the upload") -> None:
        self.location = location
        self.size = 0
        self.count = 0  # records
        self._buf = bytearray()  # records not yet in the spool
        # unnamed once on disk (O_TMPFILE, or unlinked as soon as made): nothing outlives
        # the process, whatever kills it
        test_limit = os.environ.get(IN_MEMORY_ENV, "")
        limits = ((max(1, int(test_limit)),) * 2 if test_limit.isdigit()
                  else (RECORDS_IN_MEMORY, KEPT_IN_MEMORY))
        self._recs: IO[bytes] | None = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=limits[0], prefix=".dsbackup-sent-")
        self._kept: IO[bytes] | None = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=limits[1], prefix=".dsbackup-sent-")
        self._kept_size = 0
        self._lock = threading.Lock()

    def add(self, pieces: Sequence[bytes | memoryview], joined: bytes | None = None) -> int:
        """Record one write; `joined` is the pieces' bytes when the caller already has them
        as one object (not joined again)."""
        try:
            if _member_type(pieces) in HASHED_TYPES:
                h = Xxh3_64()
                n = 0
                for p in pieces:
                    h.update(p)
                    n += len(p)
                self._buf += REC.pack(self.size, n, h.intdigest())
            else:
                n = sum(len(p) for p in pieces)
                if not n:
                    return 0
                self._buf += REC.pack(self.size, n | KEPT, self._kept_size)
                assert self._kept is not None, "record closed"
                if joined is not None:
                    self._kept.write(joined)
                else:
                    for p in pieces:
                        self._kept.write(p)
                self._kept_size += n
            if len(self._buf) >= _FLUSH:
                self._flush()
        except OSError as exc:
            raise self._no_space(exc) from None
        self.count += 1
        self.size += n
        return n

    def _no_space(self, exc: OSError) -> ArchiveError:
        tmp = tempfile.gettempdir()
        why = no_space_message(tmp) if is_no_space(exc) else f"{tmp}: {exc.strerror or exc}"
        return ArchiveError(
            f"{self.location}: keeping the record of what was sent, for the check before the "
            f"upload completes, failed: {why} (a backup to S3 or to standard output needs "
            "local temporary space: about 24 bytes per member + the index pages); "
            + ("the backup was aborted" if str(self.location) == "-" else
               "the upload was aborted, nothing was stored at the key"))

    def _flush(self) -> None:
        assert self._recs is not None, "record closed"
        self._recs.seek(0, 2)
        self._recs.write(self._buf)
        self._buf.clear()

    def seal(self) -> None:
        """Everything written so far, ready to be read back (called before the check)."""
        try:
            self._flush()
            for f in (self._recs, self._kept):
                f.flush()  # type: ignore[union-attr]
        except OSError as exc:
            raise self._no_space(exc) from None

    def read_at(self, f: IO[bytes], pos: int, length: int) -> bytes:
        with self._lock:
            f.seek(pos)
            return f.read(length)

    def records(self, first: int, count: int) -> bytes:
        """The records `first` .. `first + count - 1` (fewer at the end)."""
        assert self._recs is not None, "record closed"
        return self.read_at(self._recs, first * REC.size, count * REC.size)

    def kept(self, pos: int, length: int) -> bytes:
        assert self._kept is not None, "record closed"
        return self.read_at(self._kept, pos, length)

    def close(self) -> None:
        """Drop the spool files (idempotent)."""
        for name in ("_recs", "_kept"):
            f = getattr(self, name)
            if f is not None:
                setattr(self, name, None)
                f.close()
        self._buf = bytearray()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


class SentSource:
    """A read-only view of a SentRecord with the Source interface (thread-safe)."""

    def __init__(self, record: SentRecord, location: object) -> None:
        record.seal()
        self.record = record
        self.location = location
        self.size = record.size
        self._count = record.count
        self._lock = threading.Lock()
        self._win = b""  # records self._w0 .. self._w0 + len(self._win) // 24 - 1
        self._w0 = 0
        self._cursor = 0

    def _in_window(self, i: int) -> bool:
        return self._w0 <= i < self._w0 + len(self._win) // REC.size

    def _load(self, i: int) -> None:
        self._w0 = max(0, i - WINDOW // 8)  # a little behind: threads read out of order
        self._win = self.record.records(self._w0, WINDOW)

    def _rec(self, i: int) -> tuple[int, int, int]:
        if not self._in_window(i):
            self._load(i)
        return REC.unpack_from(self._win, (i - self._w0) * REC.size)

    def _offset(self, i: int) -> int:
        if self._in_window(i):
            return _OFF.unpack_from(self._win, (i - self._w0) * REC.size)[0]
        return _OFF.unpack(self.record.records(i, 1)[:8])[0]

    def _locate(self, offset: int) -> int | None:
        """The index of the record of the write holding byte `offset`, None when outside."""
        if not 0 <= offset < self.size:
            return None
        for i in (self._cursor, self._cursor + 1):  # in order: this one or the next
            if i < self._count:
                start, length, _ = self._rec(i)
                if start <= offset < start + (length & ~KEPT):
                    self._cursor = i
                    return i
        last = self._w0 + len(self._win) // REC.size - 1
        if last >= self._w0 and self._offset(self._w0) <= offset:
            lstart, llen, _ = REC.unpack_from(self._win, (last - self._w0) * REC.size)
            within = offset < lstart + (llen & ~KEPT)
        else:
            within = False
        if within:
            lo, hi = self._w0, last  # within the window read
        else:
            lo, hi = 0, self._count - 1  # bisect over the spooled records
        while lo < hi:  # the last record starting at or before offset
            mid = (lo + hi + 1) // 2
            if self._offset(mid) <= offset:
                lo = mid
            else:
                hi = mid - 1
        self._cursor = lo
        self._rec(lo)  # its window, for the next lookups
        return lo

    def _kept_bytes(self, offset: int, length: int) -> bytes | None:
        """The bytes at `offset` when every write they span was kept, else None."""
        with self._lock:
            i = self._locate(offset)
            if i is None or offset + length > self.size:
                return None
            start, flen, pos = self._rec(i)
            if not flen & KEPT:
                return None
            first = pos + offset - start
            end = start + (flen & ~KEPT)
            while end < offset + length:  # a read over more than one kept write
                i += 1
                nstart, flen, npos = self._rec(i)
                if not flen & KEPT or npos != pos + (nstart - start):
                    return None
                end = nstart + (flen & ~KEPT)
        return self.record.kept(first, length)

    def read(self, offset: int, length: int) -> bytes:
        data = self._kept_bytes(offset, length)
        if data is None or len(data) != length:
            raise IntegrityError(f"{self.location}: the check asked for {length} bytes at "
                                 f"{offset}, which is not a member that was sent")
        return data

    def xxh3(self, offset: int, length: int) -> int:
        with self._lock:
            j = (self._cursor + 1 - self._w0) * REC.size  # the common case: the next write
            if 0 <= j < len(self._win):
                start, n, digest = REC.unpack_from(self._win, j)
                if start == offset and n == length:
                    self._cursor += 1
                    return digest
            i = self._locate(offset)
            got: Any = self._rec(i) if i is not None else None
        if got is not None and got[0] == offset and got[1] == length:  # hashed, not kept
            return got[2]
        data = self._kept_bytes(offset, length)
        if data is None or len(data) != length:
            raise IntegrityError(f"{self.location}: no member of {length} bytes was sent at "
                                 f"offset {offset}")
        return xxh3_64(data)

    def close(self) -> None:
        pass
