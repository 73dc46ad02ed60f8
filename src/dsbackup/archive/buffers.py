"""Reused buffers for the chunks a reader decodes (restore, verify, ls): no allocation per
chunk. A chunk's member and its inflated payload are 0.5-2 MiB of varying size; allocated per
chunk from the heap, among small long-lived objects, they left holes that a larger one did not
fit now and then, so a reader's heap crept up over minutes (docs/PERFORMANCE.md, "4 GiB against
32 GiB"); mapped per chunk, every chunk cost fresh page faults (twice the CPU of ls).

Here the buffers are mapped (``mmap``, outside the heap) and kept: `ThreadBuffers` holds one
growable buffer per thread and slot, for data used before the thread's next chunk (a member's
bytes, the payload verify or ls parses); `PayloadRing` cuts the payloads a restore holds until
its batch is written from one mapping, taken and released in the same order."""

from __future__ import annotations

import mmap
import threading
from collections import deque
from collections.abc import Callable

GRAIN = 1 << 20  # a buffer grows in whole MiB
KEEP_MAX = 16 << 20  # larger requests (a chunk of one huge record) get a buffer of their own

Taker = Callable[[int], memoryview]


def _mapped(n: int) -> memoryview:
    return memoryview(mmap.mmap(-1, max(n, 1), flags=mmap.MAP_PRIVATE))  # counted as anonymous


def grown(buf: memoryview | None, n: int) -> memoryview:
    """`buf` if it holds n bytes, else a new mapping of n bytes rounded up to GRAIN."""
    if buf is not None and len(buf) >= n:
        return buf
    return _mapped(-(-n // GRAIN) * GRAIN)


class ThreadBuffers:
    """Per-thread buffers, one per slot (a small int), each grown to the largest request of
    its thread and kept: `take(slot, n)` is a writable view of n bytes, valid until the same
    thread takes that slot again."""

    def __init__(self, slots: int = 2) -> None:
        self._slots = slots
        self._tls = threading.local()

    def take(self, slot: int, n: int) -> memoryview:
        bufs = getattr(self._tls, "bufs", None)
        if bufs is None:
            bufs = self._tls.bufs = [None] * self._slots
        buf = bufs[slot]
        if buf is None or len(buf) < n:
            if n > KEEP_MAX:
                return _mapped(n)[:n]
            buf = bufs[slot] = grown(None, n)
        return buf[:n]

    def taker(self, slot: int) -> Taker:
        """`take` for one slot: what a decoder given ``into`` calls."""
        return lambda n: self.take(slot, n)


class PayloadRing:
    """Buffers cut from one mapping of `capacity` bytes, released in the order they were
    taken (FIFO): the payloads a restore submits in chunk order and frees a batch at a time.
    Its pages are touched once and then reused, whatever the archive's size. A request that
    does not fit (larger than the free contiguous space: a very large chunk, or more in
    flight than the capacity was sized for) gets a mapping of its own; nothing blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = _mapped(capacity)
        self._live: deque[tuple[int, int]] = deque()  # (start, number) of regions, in order
        self._head = 0  # where the next region starts
        self._taken = 0  # regions taken so far: the next one's number
        self._lock = threading.Lock()
        self.overflows = 0  # requests served by a mapping of their own

    def take(self, n: int) -> tuple[memoryview, int | None]:
        """(a writable view of n bytes, a token for `release`; None: not from the ring)."""
        with self._lock:
            start = self._fit(n)
            if start is None:
                self.overflows += 1
                return _mapped(n)[:n], None
            self._live.append((start, self._taken))
            self._taken += 1
            self._head = start + n
            return self._buf[start : start + n], self._taken - 1

    def _fit(self, n: int) -> int | None:
        if not self._live:
            self._head = 0
            return 0 if n <= self.capacity else None
        tail = self._live[0][0]
        if self._head == tail:  # wrapped round to the oldest live region: full
            return None
        if self._head > tail:  # free: [head, capacity) and [0, tail)
            if self._head + n <= self.capacity:
                return self._head
            return 0 if n <= tail else None
        return self._head if self._head + n <= tail else None  # free: [head, tail)

    def release(self, token: int | None) -> None:
        """Release every region taken up to and including the one `token` names."""
        if token is None:
            return
        with self._lock:
            while self._live and self._live[0][1] <= token:
                self._live.popleft()
