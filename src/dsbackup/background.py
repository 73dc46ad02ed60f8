"""``BackgroundCall``: one call at a time in a thread of its own (an fsync, a batch commit and
its journal update) while the caller goes on; ``wait()`` joins it and raises what it raised.
The restore's journal sync and staged commits and the archive's final fsync use it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class BackgroundCall:
    def __init__(self, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a daemon thread, after waiting for the call before it (whose
        error, if any, is raised here instead)."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True,
                                        name=self._name)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - raised by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
