"""``ordered_map``: a thread pool's results in the order of their items, a bounded window of
them in flight (``pool.map`` would submit every item at once: memory growing with their
number, e.g. an archive's chunk count). Verify, consolidate and restore read chunks with it."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from dsbackup.errors import Cancelled

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int, *,
                cancel: threading.Event | None = None,
                cancelled: str = "cancelled", cost: Callable[[T], int] | None = None,
                budget: int = 0) -> Iterator[R]:
    """fn(item) for each item in `pool`, results in order, at most `window` submitted and not
    yet taken. A result's exception is raised here, in its turn. `cancel` set: ``Cancelled``
    (`cancelled` its message) before the next result is waited for. Leaving (an error, the
    consumer closing the generator) cancels what has not started.

    With `cost` and `budget`: also at most `budget` of cost(item) submitted and not yet taken
    (one item at least), so the memory in flight is bounded by bytes, not only by count: with
    a count alone it is the largest sum of `window` consecutive items, which grows with the
    run's length when item sizes vary."""
    pending: deque[tuple[Future[R], int]] = deque()
    it = iter(items)
    end: Any = object()
    held: Any = end  # the next item, when it did not fit in the budget
    in_flight = 0

    def fill() -> None:
        nonlocal held, in_flight
        while len(pending) < window:
            item = next(it, end) if held is end else held
            held = end
            if item is end:
                return
            c = cost(item) if cost is not None else 0
            if budget and pending and in_flight + c > budget:
                held = item
                return
            pending.append((pool.submit(fn, item), c))
            in_flight += c

    try:
        fill()
        while pending:
            if cancel is not None and cancel.is_set():
                raise Cancelled(cancelled)
            f, c = pending.popleft()
            in_flight -= c
            yield f.result()
            fill()
    finally:
        for f, _ in pending:
            f.cancel()
