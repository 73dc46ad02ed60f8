"""LMDB -> LMDB pass-through copy with no per-record Python code.

Two levels. When the manager can lend both environments exclusively (it opened them, so it
can close them and reopen them after), :func:`native_copier` copies with liblmdb in C with
the GIL released (``dsbackup._ext.lmdbcopy``): no Python object per record at all. Otherwise
:func:`copy_batches` does it through py-lmdb:

A copy step without transform, filter or validator moves whole batches. Between two LMDB
stores the batches need not even be split into key and value lists: the source cursor's
``(key, value)`` tuples go in slices straight into the target's ``putmulti`` (append mode
when the slice lies past the target's last key, as in a copy into an empty store). Every
per-record step runs inside py-lmdb's C code; Python touches each batch once.

This uses two internals of :class:`~dsbackup.datastores.lmdb.LmdbDatastore` —
``_begin_read()`` (a read transaction with its map-resize handling) and ``_write(ops,
append=)`` (one write transaction with map growth) — and is used only when both exist;
otherwise the engine falls back to the public ``scan_batches``/``put_many`` path, with the
same result.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

__all__ = ["applicable", "copy_batches", "native_available", "native_compare",
           "native_copier", "NativeTarget"]

_first = itemgetter(0)
_second = itemgetter(1)


def _is_lmdb(ds: Any) -> bool:
    cls = type(ds)
    return (cls.__name__ == "LmdbDatastore" and getattr(ds, "scheme", "") == "lmdb"
            and hasattr(ds, "_begin_read") and hasattr(ds, "_write")
            and hasattr(ds, "last_key"))


def applicable(src: Any, dst: Any) -> bool:
    return src is not dst and _is_lmdb(src) and _is_lmdb(dst) and not dst.readonly


def copy_batches(src: Any, dst: Any, start: bytes, end: bytes | None, max_records: int
                 ) -> Iterator[tuple[bytes, int, int]]:
    """Copy ``[start, end)`` from ``src`` to ``dst``; after each written batch yield
    ``(last key, records, value bytes)``."""
    src._check_open()
    dst._check_writable()
    txn = src._begin_read()
    try:
        cur = txn.cursor()
        if not cur.set_range(start):
            return
        it = cur.iternext()
        while True:
            chunk = list(itertools.islice(it, max_records))
            if not chunk:
                return
            done = False
            if end is not None and chunk[-1][0] >= end:
                chunk = chunk[:bisect.bisect_left(chunk, end, key=_first)]
                done = True
                if not chunk:
                    return
            last = dst.last_key()
            dst._write(chunk, append=last is None or chunk[0][0] > last)
            yield chunk[-1][0], len(chunk), sum(map(len, map(_second, chunk)))
            if done:
                return
    finally:
        txn.abort()


def native_available() -> bool:
    try:
        from dsbackup._ext import lmdbcopy  # noqa: F401
    except ImportError:
        return False
    return True


def native_copier(src_path: str, dst_path: str, start: bytes, end: bytes | None) -> Any:
    """An ``LmdbCopier`` for the range, or ``None`` when the native module is not built.
    Both environments must not be open through py-lmdb in this process."""
    try:
        from dsbackup._ext.lmdbcopy import LmdbCopier
    except ImportError:
        return None
    data = os.path.join(dst_path, "data.mdb")
    used = os.path.getsize(data) if os.path.exists(data) else 0
    src_used = os.path.getsize(os.path.join(src_path, "data.mdb"))
    map_size = max(64 << 20, 2 * used, used + 2 * src_used)
    return LmdbCopier(src_path, dst_path, start, end, map_size=map_size)


class NativeTarget:
    """Lets the engine's checkpoints sync the target through the native copier."""

    def __init__(self, copier: Any) -> None:
        self.copier = copier

    def sync(self, prefix: object = "/") -> None:
        self.copier.sync()


def native_compare(src_path: str, dst_path: str, start: bytes, end: bytes | None
                   ) -> tuple[int, int, int, bytes | None, str | None]:
    """``(records, bytes, mismatches, first bad key, "missing"|"differs")`` for the range,
    compared with liblmdb; both environments must not be open through py-lmdb meanwhile."""
    from dsbackup._ext.lmdbcopy import compare_range

    return compare_range(src_path, dst_path, start, end)
