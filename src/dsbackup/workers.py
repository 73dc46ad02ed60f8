"""The worker count of a command: ``--workers N`` checked, or the CPU count.

Apart from ``BackupConfig`` so that restore and verify, which need only this of it, do not
import the backup settings' module (a 17-field dataclass, the codecs' table) at start-up
(docs/PERFORMANCE.md, "Restore and deep verify at quarter scale, fresh profile").
"""

from __future__ import annotations

import os

from dsbackup.errors import ConfigError

# workers: a scan process (or thread) each; --workers 99999999 forked until 'Too many open files'
MAX_WORKERS = 256


def check_workers(workers: object) -> None:
    """ConfigError unless `workers` is None or an int from 1 to MAX_WORKERS."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= MAX_WORKERS):
        raise ConfigError(f"workers must be a positive integer (1 to {MAX_WORKERS}), got "
                          f"{workers!r}")


def effective_workers(workers: int | None) -> int:
    """`workers` checked (check_workers), or the CPU count (at most MAX_WORKERS) for None."""
    check_workers(workers)
    return workers or min(os.cpu_count() or 1, MAX_WORKERS)
