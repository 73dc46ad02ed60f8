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
                cancelled: str = "cancelled") -> Iterator[R]:
    """fn(item) for each item in `pool`, results in order, at most `window` submitted and not
    yet taken. A result's exception is raised here, in its turn. `cancel` set: ``Cancelled``
    (`cancelled` its message) before the next result is waited for. Leaving (an error, the
    consumer closing the generator) cancels what has not started."""
    pending: deque[Future[R]] = deque()
    it = iter(items)
    end: Any = object()
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            if cancel is not None and cancel.is_set():
                raise Cancelled(cancelled)
            yield pending.popleft().result()
            nxt = next(it, end)
            if nxt is not end:
                pending.append(pool.submit(fn, nxt))
    finally:
        for f in pending:
            f.cancel()
