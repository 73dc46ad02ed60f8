"""Which scan a backup uses, and a guess of it from file sizes before the store is opened.

Stores that worker processes can read side by side (LMDB, flatfs, SQLite) of PARALLEL_MIN_BYTES
or more are scanned in parallel (parallel.py); the rest centrally (central.py): starting the
worker processes costs more than a small store repays (docs/PERFORMANCE.md, "Measurements
behind the code").
"""

from __future__ import annotations

import os

from dsbackup.datastores.registry import detect_scheme, parse_uri
from dsbackup.errors import DsBackupError

PARALLEL_SCHEMES = {"lmdb", "flatfs", "sqlite"}
PARALLEL_MIN_BYTES = 32 << 20


def likely_parallel(source: str) -> bool:
    """Whether a backup of ``source`` (a URI or a bare path) will probably scan in parallel,
    judged from file sizes alone (the CLI gets the workers ready early on it). A wrong
    guess costs tens of milliseconds: LMDB and SQLite files are sized; a flatfs directory is
    assumed large (sizing it would walk it)."""
    try:
        scheme, path, _ = parse_uri(source)
        if scheme is None:
            scheme = detect_scheme(path)
        if scheme not in PARALLEL_SCHEMES:
            return False
        if scheme == "flatfs":
            return True
        if scheme == "lmdb" and os.path.isdir(path):
            path = os.path.join(path, "data.mdb")
        return os.path.getsize(path) >= PARALLEL_MIN_BYTES
    except (OSError, DsBackupError):
        return False


def prestart_workers(source: str, *, workers: int | None = None, incremental: bool = False,
                     format: str = "dsbackup", fork_zygote: bool = False) -> bool:
    """Get the parallel scan's workers ready to start while the caller imports the backup
    code, when a backup of `source` will probably use worker processes; whether it did.
    Incremental backups and the Go format read the source themselves (no workers).

    ``fork_zygote``: fork the workers' zygote from this process now (pipeline/zygote.py:
    only where it has one thread and no LMDB environment open; pass it only before opening
    anything, as the CLI does). Else, where cores are to spare
    (dsbackup.pipeline.forkserver.prestart_wanted), boot the fork server."""
    if workers == 1 or incremental or format != "dsbackup":
        return False
    if fork_zygote:
        from dsbackup.pipeline import zygote

        if zygote.wanted() and likely_parallel(source) and zygote.start() is not None:
            return True
    from dsbackup.pipeline import forkserver  # multiprocessing: only where no zygote runs

    if not forkserver.prestart_wanted() or not likely_parallel(source):
        return False
    forkserver.prestart()
    return True


def stop_workers_zygote() -> None:
    """Stop the workers' zygote that ``prestart_workers(..., fork_zygote=True)`` forked, if
    one runs (it would stop at exit): its workers have ended with their backups."""
    from dsbackup.pipeline import zygote

    zygote.stop()
