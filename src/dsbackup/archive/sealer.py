"""The sealing thread of an encrypted archive writer (docs/FORMAT.md §11.4).

Chunks of an encrypted archive are sealed by one thread, in the order they were submitted,
while the writer's own thread goes on: it appends the chunks already sealed, in order, and a
parallel backup's loop keeps feeding its workers; a chunk is sealed while the ones before it
are written. At most ``ahead`` items wait or run: `submit` blocks while that many do, which
bounds the worker slots held. An error of the thread is raised by the next `submit`,
`wait_done` or `drain`; the items not done then are dropped (``drop`` is called on each, so
that a held slot is given back).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

SEAL_AHEAD = 4  # chunks submitted and not yet appended (the first ones hold a worker's slot)


class SealThread:
    """Run ``job(item)`` for each submitted item, in order, in one thread."""

    def __init__(self, job: Callable[[Any], None], drop: Callable[[Any], None], *,
                 ahead: int = SEAL_AHEAD, name: str = "dsbackup-seal") -> None:
        self._job, self._drop, self._ahead = job, drop, max(1, ahead)
        self._items: deque[Any] = deque()
        self._busy = False  # the thread runs a job (taken off the queue)
        self.done = 0  # jobs finished
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._items and not self._stop:
                    cond.wait()
                if self._stop:
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self._job(item)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                with cond:
                    self._error = exc
                    self._busy = False
                    self._stop = True
                    cond.notify_all()
                return
            del item  # (a view of a worker's slot, given back by the job)
            with cond:
                self._busy = False
                self.done += 1
                cond.notify_all()

    def _raise(self) -> None:
        """Raise the thread's error (with the lock held): each later call raises it too."""
        if self._error is not None:
            raise self._error

    def submit(self, item: Any) -> None:
        """Queue `item`; waits while `ahead` items are queued or running."""
        with self._cond:
            while (not self._stop and self._error is None
                   and len(self._items) + self._busy >= self._ahead):
                self._cond.wait()
            self._raise()
            if self._stop:
                raise RuntimeError("the sealing thread has stopped")
            self._items.append(item)
            self._cond.notify_all()

    def wait_done(self, n: int) -> None:
        """Wait until `n` jobs have finished; raise the thread's error if any."""
        with self._cond:
            while self.done < n and self._error is None and not self._stop:
                self._cond.wait()
            self._raise()
            if self.done < n:
                raise RuntimeError("the sealing thread has stopped")

    def drain(self) -> None:
        """Wait until every submitted item is done; raise the thread's error if any."""
        with self._cond:
            while (self._items or self._busy) and self._error is None and not self._stop:
                self._cond.wait()
            self._raise()
            if self._items or self._busy:
                raise RuntimeError("the sealing thread has stopped")

    def close(self) -> None:
        """Stop the thread (after the job it runs) and drop what is still queued."""
        with self._cond:
            self._stop = True
            dropped = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        for item in dropped:
            self._drop(item)
