"""In-memory datastore (go-datastore's ``MapDatastore``), for tests and small jobs.

Not shared between processes: ``parallel_readable`` is False and ``memory:`` opens a new,
empty store each time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from dsbackup.datastores.base import BaseDatastore
from dsbackup.errors import NotFound


class MemoryDatastore(BaseDatastore):
    """A dict plus a sorted key list (kept lazily) for ordered scans."""

    scheme = "memory"
    parallel_readable = False

    def __init__(self, uri: str = "memory:", *, readonly: bool = False) -> None:
        super().__init__(uri, readonly=readonly)
        self._data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = []
        self._lock = threading.RLock()

    def _get(self, key: bytes) -> bytes:
        try:
            return self._data[key]
        except KeyError:
            raise NotFound(f"key {key!r} not found in {self.uri}") from None

    def _put(self, key: bytes, value: bytes) -> None:
        with self._lock:
            if key not in self._data:
                self._sorted = None
            self._data[key] = value

    def _delete(self, key: bytes) -> None:
        with self._lock:
            if self._data.pop(key, None) is not None:
                self._sorted = None

    def _keys(self) -> list[bytes]:
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted(self._data)
            return self._sorted

    def _range(self, start: bytes, end: bytes | None) -> list[bytes]:
        keys = self._keys()
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        return keys[lo:hi]

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        data = self._data
        for k in self._range(start, end):
            v = data.get(k)
            if v is not None:
                yield k, v

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        data = self._data
        for k in self._range(start, end):
            v = data.get(k)
            if v is not None:
                yield k, len(v)

    def _apply_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        with self._lock:
            super()._apply_batch(ops)

    def approx_count(self) -> int:
        return len(self._data)

    def approx_size(self) -> int:
        return sum(map(len, self._data.values()))

    def last_key(self) -> bytes | None:
        keys = self._keys()
        return keys[-1] if keys else None

    def is_empty(self) -> bool:
        return not self._data

    def disk_usage(self) -> int:
        return 0


def open_memory(path: str = "", *, readonly: bool = False) -> MemoryDatastore:
    if path:
        raise ValueError("memory: takes no path")
    return MemoryDatastore("memory:", readonly=readonly)
