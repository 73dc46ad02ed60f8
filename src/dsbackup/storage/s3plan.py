"""The S3 source's sparse fetch: the byte ranges a reader said it is about to read, in order
(``S3Source.plan``, e.g. `ls`'s catalog members), fetched ahead by ranged GETs of just those
ranges instead of whole 8 MiB blocks (docs/STORAGE.md "Reading").

Ranges less than the gap apart (``DSBACKUP_S3_GAP_KB``, default 64 KiB) share one GET, up to
a block's size; each span is fetched by the source's own GET into a buffer of its own (a
reused block buffer from 1 MiB on), on the source's pool of ``DSBACKUP_S3_READ_CONCURRENCY``
threads, with every check and retry of :mod:`dsbackup.storage.s3get`. At most ``AHEAD_BYTES``
of spans and ``AHEAD_PER_THREAD`` x the concurrency of them are held or in flight: memory is
bounded however many ranges the plan holds (the ranges are pulled from the caller's iterator
only as the fetch runs ahead). A read served by a span drops the spans before it (the reader
moved past them); a read outside the spans held (an index page, a read out of order) goes
through the blocks as before: the plan is a hint, never the only way to a byte. Each planned
range is meant to be read once, by one reader moving forward (`ls`): a second read of it, or
a read by another thread after the reader moved past it, goes through the blocks.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
AHEAD_BYTES = 32 << 20  # bytes of spans held or in flight, at most
AHEAD_PER_THREAD = 4  # spans queued per GET in flight (small catalogs: latency bound)
SMALL_SPAN = 1 << 20  # a span below this gets a bytearray of its own, a larger a block buffer


class Span:
    """Ranges fetched by one GET: [start, end), the planned reads it still serves, its
    buffer, the fetch, and its pins (as the source's blocks: the buffer goes back to the
    source only when neither its fetch nor a reader holds it)."""

    __slots__ = ("start", "end", "left", "buf", "future", "pins", "cached")

    def __init__(self, start: int, end: int, left: int, buf: Any) -> None:
        self.start, self.end, self.left = start, end, left
        self.buf = buf
        self.future: Any = None
        self.pins = 1  # the fetch's
        self.cached = True


class SparsePlan:
    """One plan of a source (`src`: an S3Source; its lock guards the spans)."""

    def __init__(self, src: Any, ranges: Iterable[tuple[int, int]], gap: int,
                 span_max: int, threads: int) -> None:
        self._src = src
        self._it: Iterator[tuple[int, int]] | None = iter(ranges)
        self._next: tuple[int, int] | None = None  # pulled from the plan, in no span yet
        self._spans: deque[Span] = deque()
        self._held = 0
        self._gap, self._span_max = gap, span_max
        self._max_spans = AHEAD_PER_THREAD * threads
        self._pulling = threading.Lock()  # one thread pulls the caller's iterator at a time
        self.gets = 0  # spans fetched
        self.bytes = 0

    # -- reading -------------------------------------------------------------------------

    def serve(self, offset: int, length: int, use: Callable[[memoryview], T]) -> T | None:
        """`use` of the planned bytes [offset, offset+length), or None when no span held
        covers them (the caller reads them through its blocks)."""
        sp = self._pin(offset, length)
        if sp is None:
            return None
        try:
            sp.future.result()
            lo = offset - sp.start
            with memoryview(sp.buf) as view:
                return use(view[lo:lo + length])
        finally:
            with self._src._lock:
                sp.pins -= 1
                sp.left -= 1
                if sp.left <= 0 and sp.cached:
                    self._spans.remove(sp)
                    self._drop(sp)
                else:
                    self._src._release(sp)
            self.top_up()

    def _pin(self, offset: int, length: int) -> Span | None:
        end = offset + length
        with self._src._lock:
            sp = self._find(offset, end)
            if sp is not None or self._next is None:
                return sp
            # past every span held, and the next planned range: the reader moved on
            s, e = self._next
            if not (s <= offset and end <= e) or (
                    self._spans and offset < self._spans[-1].end):
                return None
            while self._spans:
                self._drop(self._spans.popleft())
        self.top_up()
        with self._src._lock:
            return self._find(offset, end)

    def _find(self, offset: int, end: int) -> Span | None:
        """The span holding [offset, end), pinned, the spans before it dropped; caller holds
        the source's lock."""
        for k, sp in enumerate(self._spans):
            if sp.start <= offset and end <= sp.end:
                for _ in range(k):
                    self._drop(self._spans.popleft())
                sp.pins += 1
                return sp
            if sp.start > offset:
                break
        return None

    def _drop(self, sp: Span) -> None:
        """A span out of the plan: its buffer goes back when nothing pins it; caller holds
        the source's lock."""
        sp.cached = False
        self._held -= _size(sp.buf)
        self._src._release(sp)

    # -- fetching ahead ------------------------------------------------------------------

    def top_up(self) -> None:
        """Start the fetches of the next spans while the budget allows. The caller's iterator
        may read (an index page): it runs outside the source's lock, one thread at a time; a
        read it makes that lands here again does not pull."""
        if not self._pulling.acquire(blocking=False):
            return
        try:
            while True:
                with self._src._lock:
                    if self._held >= AHEAD_BYTES or len(self._spans) >= self._max_spans:
                        return
                first = self._take()
                if first is None:
                    return
                start, end = first
                left = 1
                while (nxt := self._peek()) is not None:
                    s, e = nxt
                    if s < end or s - end > self._gap or e - start > self._span_max:
                        break
                    self._next, end, left = None, e, left + 1
                self._start(Span(start, end, left, self._buffer(end - start)))
        finally:
            self._pulling.release()

    def _start(self, sp: Span) -> None:
        with self._src._lock:
            self._spans.append(sp)
            self._held += _size(sp.buf)
            self.gets += 1
            self.bytes += sp.end - sp.start
            sp.future = self._src._executor().submit(self._src._fill, sp, sp.start, sp.end)

    def _buffer(self, n: int) -> Any:
        if n < SMALL_SPAN:
            return bytearray(n)
        with self._src._lock:
            return self._src._take_buffer()

    def _take(self) -> tuple[int, int] | None:
        r = self._peek()
        self._next = None
        return r

    def _peek(self) -> tuple[int, int] | None:
        """The next planned range worth a span (not empty, under a block, starting before the
        tail the open fetched); None at the plan's end. A failing iterator (a damaged index page) ends
        the plan: the reader meets the damage itself when it reads there."""
        while self._next is None and self._it is not None:
            try:
                offset, length = next(self._it)
            except StopIteration:
                self._it = None
                break
            except Exception:  # noqa: BLE001 - a hint only; the reader reports the damage
                self._it = None
                break
            if 0 < length < self._span_max and 0 <= offset < self._src._tail_start and \
                    offset + length <= self._src.size:
                self._next = (offset, offset + length)
        return self._next

    def close(self) -> None:
        """Forget the plan: its spans' buffers go back once nothing pins them."""
        with self._src._lock:
            self._it, self._next = None, None
            while self._spans:
                self._drop(self._spans.popleft())


def _size(buf: Any) -> int:
    return 0 if buf is None else len(buf)
