"""Where the native LMDB restore's main thread spends its CPU, in-process (issue #21).

Usage: python benchmarks/restore_threads.py ARCHIVE [ROUNDS]

Each round restores ARCHIVE into a new lmdb: directory with restore_archive (no CLI start-up)
and prints the wall seconds, the process's CPU seconds (every thread), the main thread's
(the writer's) CPU seconds and, of those, what LmdbPayloadWriter.write, the writeback start
after each batch and the final sync took (thread CPU). The rest of the process's CPU is the
inflate pool's. Run under `chrt -f 10` on a shared machine.
"""

from __future__ import annotations

import collections
import shutil
import sys
import tempfile
import time
from typing import Any

import dsbackup.engine.restore as restore
from dsbackup import restore_archive
from dsbackup.allocator import tune_allocator

spent: collections.Counter[str] = collections.Counter()


class _TimedWriter:
    def __init__(self, writer: Any) -> None:
        self._w = writer

    def write(self, *a: Any, **k: Any) -> Any:
        c = time.thread_time()
        try:
            return self._w.write(*a, **k)
        finally:
            spent["write"] += time.thread_time() - c

    def sync(self) -> None:
        c = time.thread_time()
        try:
            self._w.sync()
        finally:
            spent["sync"] += time.thread_time() - c

    def __getattr__(self, name: str) -> Any:
        return getattr(self._w, name)


def _patch() -> None:
    init = restore._NativeLmdbTarget.__init__
    start = restore._NativeLmdbTarget.start_writeback

    def timed_init(self: Any, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        self.writer = _TimedWriter(self.writer)

    def timed_start(self: Any) -> None:
        c = time.thread_time()
        start(self)
        spent["writeback"] += time.thread_time() - c

    restore._NativeLmdbTarget.__init__ = timed_init  # type: ignore[method-assign]
    restore._NativeLmdbTarget.start_writeback = timed_start  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    _patch()
    tune_allocator()  # as the CLI does
    work = tempfile.mkdtemp(prefix="restore-threads-")
    try:
        for _ in range(int(argv[1]) if len(argv) > 1 else 5):
            out = f"{work}/out"
            shutil.rmtree(out, ignore_errors=True)
            spent.clear()
            c0, p0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
            restore_archive(argv[0], f"lmdb:{out}", workers=2)
            c1, p1, t1 = time.thread_time(), time.process_time(), time.perf_counter()
            parts = " ".join(f"{k} {v:.3f}" for k, v in sorted(spent.items()))
            print(f"wall {t1 - t0:.3f} process {p1 - p0:.3f} main {c1 - c0:.3f} {parts}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
