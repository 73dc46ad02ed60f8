"""`python -m dsbackup ...` with the scan's planner and workers one real-time priority below
the CLI: run it under `chrt -f N+1` and they run at SCHED_FIFO N (benchmarks/small_backup_ab.py,
``AB_PARENT_FIRST=1``). Under one FIFO priority for all, the parent loop runs only when a core
is free; this way it preempts a worker as soon as a message comes, as on a quiet CFS machine,
while the other load of a shared machine still preempts none of them (docs/PERFORMANCE.md)."""

from __future__ import annotations

import gc
import os
import sys

gc.disable()  # as the command's entry does while its modules load (cli/_entry.py)

from dsbackup.pipeline import worker  # noqa: E402

_run = worker._Worker.run


def _run_below(self: worker._Worker) -> None:
    prio = os.sched_getparam(0).sched_priority
    if os.sched_getscheduler(0) == os.SCHED_FIFO and prio > 1:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio - 1))
    _run(self)


worker._Worker.run = _run_below  # the zygote forks them after this
sys.argv = ["dsbackup", *sys.argv[1:]]

from dsbackup.cli._entry import run  # noqa: E402

raise SystemExit(run())
