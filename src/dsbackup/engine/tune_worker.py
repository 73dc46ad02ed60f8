"""tune's calibration backups, each in a fresh worker process.

A calibration backup is timed as a user's ``dsbackup backup`` would run: in a new interpreter
(multiprocessing's ``spawn``: cold imports, the scan workers' fork server started from
scratch), with the CLI's process set-up (allocator tuning; the fork server started early
where the CLI would start it) and then ``BackupManager.create_backup`` through the library —
no command line is built or parsed. The time is the backup's own ``duration_s``, not the
interpreter's start-up. This module imports little, so the worker's set-up happens in the
same order as the CLI's.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
from multiprocessing.connection import Connection
from pathlib import Path

from dsbackup.engine.config import BackupConfig
from dsbackup.errors import EXIT_INTERRUPTED, BackupError, Cancelled

__all__ = ["backup_in_worker"]


def _child(conn: Connection, source: str, archive: str, config: BackupConfig) -> None:
    """The worker: one backup, its (seconds, archive bytes) or its error sent back."""
    logging.getLogger().addHandler(logging.NullHandler())  # quiet, as the CLI's captured stderr
    try:
        from dsbackup.allocator import tune_allocator
        from dsbackup.pipeline import forkserver
        from dsbackup.pipeline.scanchoice import likely_parallel

        tune_allocator()  # as the CLI does at start
        if config.workers != 1 and forkserver.prestart_wanted() and likely_parallel(source):
            forkserver.prestart()  # as `dsbackup backup` does, before the backup code loads
        from dsbackup.engine.backup import BackupManager

        meta = BackupManager(config).create_backup(source, archive)
        reply: tuple = ("ok", float(meta.statistics.duration_s), int(meta.compressed_size))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        reply = ("error", type(exc).__name__, str(exc), int(getattr(exc, "exit_code", 0) or 0))
    try:
        conn.send(reply)
    except OSError:
        pass  # the parent is gone (interrupted): nobody to tell
    finally:
        conn.close()


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"its worker process was killed by {name}{hint}"
    return f"its worker process exited with status {exitcode} without a result"


def backup_in_worker(source: str, archive: Path, config: BackupConfig) -> tuple[float, int]:
    """Back up ``source`` to ``archive`` in a fresh worker process; returns (the backup's
    own seconds, archive bytes). Raises :class:`BackupError` naming the cause when the backup
    fails or the worker dies, :class:`Cancelled` when it was interrupted."""
    from dsbackup.pipeline.forkserver import start_context

    what = "calibration backup of the sample failed"
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    try:
        with start_context():  # the worker runs this copy of dsbackup, not the caller's script
            proc = ctx.Process(target=_child, args=(send, source, str(archive), config),
                               name="dsbackup-tune-calibration")
            proc.start()
    except (OSError, AssertionError) as exc:  # no processes left; a daemonic caller
        recv.close()
        raise BackupError(f"{what}: cannot start its worker process: {exc}") from None
    finally:
        send.close()
    try:
        try:
            reply = recv.recv()
        except EOFError:
            reply = None
        proc.join()
    finally:
        recv.close()
        if proc.is_alive():  # interrupted while waiting: no orphan keeps backing up
            proc.terminate()
            proc.join()
    if reply is None:
        raise BackupError(f"{what}: {_died(proc.exitcode)}")
    if reply[0] == "ok":
        return reply[1], reply[2]
    _, name, message, code = reply
    if code == EXIT_INTERRUPTED or name == "KeyboardInterrupt":
        raise Cancelled("calibration backup interrupted")
    raise BackupError(f"{what}: {name}: {message}" if message else f"{what}: {name}")
