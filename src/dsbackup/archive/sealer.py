"""The sealing thread of an encrypted archive writer (docs/FORMAT.md §11.4).

Chunks of an encrypted archive are sealed by one thread, in the order they were submitted,
while the writer's own thread goes on: it appends the chunks already sealed, in order, and a
parallel backup's loop keeps feeding its workers; a chunk is sealed while the ones before it
are written. The thread runs a native loop (``dsbackup._ext.seal.SealRing``) that never takes
the GIL: the writer fills in a job (nonce, associated data, the chunk's bytes, a reused output
buffer) and collects its result, in order; the thread itself runs no Python per chunk. (A
Python thread here cost ≈ 65 µs of CPU per chunk in a backup, mostly the GIL taken back after
each wait and each native call while the loop runs Python: docs/PERFORMANCE.md.)
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsbackup._ext.seal import GcmKey

SEAL_AHEAD = 4  # chunks submitted and not yet appended (the first ones hold a worker's slot)


class SealingThread:
    """A ``SealRing`` and the thread that runs it. ``submit`` returns a job number;
    ``result`` waits for the oldest job not collected; ``close`` stops the thread after the
    job it runs (the jobs not collected are dropped; their buffers are let go)."""

    def __init__(self, key: GcmKey, name: str = "dsbackup-seal") -> None:
        from dsbackup._ext.seal import SealRing

        self._ring = SealRing(key)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._ring.run, name=name, daemon=True)
        self._thread.start()

    def __reduce__(self) -> Any:
        raise TypeError("a sealing thread cannot be pickled")

    @property
    def done(self) -> int:
        """Jobs finished so far (numbered from 0 in submission order)."""
        return self._ring.done

    def submit(self, nonce: bytes, aad: bytes, data: Any, out: bytearray) -> int:
        """Queue ``seal_into(key, nonce, aad, data, out)``; ``data`` and ``out`` are held
        (exported) until the job is collected or the thread is closed."""
        return self._ring.submit(nonce, aad, data, out)

    def submit_framed(self, tag: bytes, n: int, out: bytearray) -> int:
        """Queue ``frame_into(tag, n, out)``: `out` holds the ciphertext of n bytes already
        (``ArchiveCipher.encrypt_stored``); it is held until the job is collected."""
        return self._ring.submit_framed(tag, n, out)

    def result(self, job: int) -> tuple[int, int, int, int, int]:
        """(written, crc32, size, input_len, xxh3) of ``job``, as ``seal_into``; waits for it
        (the GIL released). Its error (SealError, MemoryError) is raised here."""
        return self._ring.result(job)

    def close(self) -> None:
        """Stop the thread after the job it runs and let go of every buffer."""
        if self._thread is None:
            return
        self._ring.stop()
        self._thread.join()
        self._thread = None
        self._ring.clear()
