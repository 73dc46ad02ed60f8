"""The S3 source's sparse fetch: the byte ranges a reader said it is about to read, in order
(``S3Source.plan``, e.g. `ls`'s catalog members), fetched ahead by ranged GETs of just those
ranges instead of whole 8 MiB blocks (docs/STORAGE.md "Reading").

Ranges less than the gap apart (``DSBACKUP_S3_GAP_KB``, default 64 KiB) share one GET, up to
a block's size; each span is fetched by the source's own GET into a buffer of its own (a
reused block buffer from 1 MiB on), on the source's pool of ``DSBACKUP_S3_READ_CONCURRENCY``
threads, with every check and retry of :mod:`dsbackup.storage.s3get`. At most ``AHEAD_BYTES``
of spans and ``AHEAD_PER_THREAD`` x the concurrency of them are held or in flight: memory is
bounded however many ranges the plan holds (the ranges are pulled from the caller's iterator
only as the fetch runs ahead). Each planned range is meant to be read once, in about the
planned order: by one reader (`ls`) or by a pool of readers a window apart (restore, verify).
A span leaves the plan when all its ranges were read, when its fetch failed (its reads then
go through the blocks, fetched again), or when reads have moved more than ``AHEAD_BYTES``
past it; a read ahead of every span started (a reader of the pool a few members ahead)
starts the spans up to it at once, at most ``AHEAD_BYTES`` past the budget, so memory stays
under twice the budget. A read outside the spans held (an index page, a second read of a
range) goes through the blocks as before: the plan is a hint, never the only way to a byte.
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
        self._puller = 0  # the thread pulling now (its own reads must not pull again)
        self._frontier = 0  # the end of the furthest span started
        self._closed = False
        self.gets = 0  # spans fetched
        self.bytes = 0

    # -- reading -------------------------------------------------------------------------

    def serve(self, offset: int, length: int, use: Callable[[memoryview], T], *,
              advance: bool = True) -> T | None:
        """`use` of the planned bytes [offset, offset+length), or None when no span covers
        them (the caller reads them through its blocks). `advance`: a read ahead of every
        span fetched starts the spans up to it now, past the budget if need be (a pool of
        readers, one of them a few members ahead); a read apart from the plan (an index
        page) passes False and only uses a span already there."""
        sp = self._pin(offset, length, advance)
        if sp is None:
            return None
        try:
            self._src._wait(sp.future)
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

    def _pin(self, offset: int, length: int, advance: bool) -> Span | None:
        end = offset + length
        with self._src._lock:
            sp = self._find(offset, end)
            if sp is not None or not advance or self._closed or offset < self._frontier or (
                    self._it is None and self._next is None):
                return sp
        # ahead of every span started: another reader of the pool is behind this one, or
        # the budget is held by spans whose reads are still to come; start the spans up to
        # this read (at most AHEAD_BYTES past the budget), so neither goes to the blocks
        if not self._advance(offset, end):
            return None
        with self._src._lock:
            return self._find(offset, end)

    def _find(self, offset: int, end: int) -> Span | None:
        """The span holding [offset, end), pinned; spans more than AHEAD_BYTES behind it
        are dropped (their reads went elsewhere, or never came: readers of a pool stay
        within a window of each other); caller holds the source's lock."""
        for sp in self._spans:
            if sp.start <= offset and end <= sp.end:
                while self._spans[0] is not sp and self._spans[0].end + AHEAD_BYTES <= offset:
                    self._drop(self._spans.popleft())
                sp.pins += 1
                return sp
            if sp.start > offset:
                break
        return None

    def forget(self, sp: Span) -> None:
        """A span whose fetch failed leaves the plan: its reads go through the blocks (a
        fresh GET each), never its error again; caller holds the source's lock."""
        if sp.cached:
            try:
                self._spans.remove(sp)
            except ValueError:
                return
            self._drop(sp)

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
        self._puller = threading.get_ident()
        try:
            while True:
                with self._src._lock:
                    if self._held >= AHEAD_BYTES or len(self._spans) >= self._max_spans:
                        return
                if not self._pull_one():
                    return
        finally:
            self._puller = 0
            self._pulling.release()

    def _advance(self, offset: int, end: int) -> bool:
        """Start the spans up to the one holding [offset, end), past the budget by at most
        AHEAD_BYTES; False when this thread is the one pulling (the plan's own iterator
        reading an index page) or the plan is closed."""
        if self._puller == threading.get_ident():
            return False
        with self._pulling:
            self._puller = threading.get_ident()
            try:
                extra = 0
                while extra < AHEAD_BYTES and not self._closed:
                    with self._src._lock:
                        last = self._spans[-1] if self._spans else None
                        if last is not None and (last.start > offset or end <= last.end):
                            return True  # it, or the spans past it, are started
                    nxt = self._peek()
                    if nxt is None or nxt[0] > offset:
                        return True  # not planned (the plan's next range starts later)
                    if not self._pull_one():
                        return True
                    extra += self._spans[-1].end - self._spans[-1].start if self._spans else 0
                return True
            finally:
                self._puller = 0

    def _pull_one(self) -> bool:
        """Pull the next span's ranges from the plan and start its fetch; False at its end;
        caller holds the pulling lock."""
        first = self._take()
        if first is None:
            return False
        start, end = first
        left = 1
        while (nxt := self._peek()) is not None:
            s, e = nxt
            if s < end or s - end > self._gap or e - start > self._span_max:
                break
            self._next, end, left = None, e, left + 1
        self._start(Span(start, end, left, self._buffer(end - start)))
        return True

    def _start(self, sp: Span) -> None:
        with self._src._lock:
            if self._closed:  # closed while this span was being pulled: never fetched
                return
            sp.future = self._src._submit(sp, sp.start, sp.end)  # raises once closed
            self._spans.append(sp)
            self._frontier = max(self._frontier, sp.end)
            self._held += _size(sp.buf)
            self.gets += 1
            self.bytes += sp.end - sp.start

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
            self._closed = True
            self._it, self._next = None, None
            while self._spans:
                self._drop(self._spans.popleft())


def _size(buf: Any) -> int:
    return 0 if buf is None else len(buf)
