"""tune's calibration backups, each in a fresh worker process.

A calibration backup is timed as a user's ``dsbackup backup`` would run: in a new interpreter
(multiprocessing's ``spawn``: cold imports, the scan workers' zygote or fork server started
from scratch), with the CLI's process set-up (allocator tuning; the workers' zygote forked
where the CLI forks it) and then ``BackupManager.create_backup`` through the library — no
command line is built or parsed. The time is the backup's own ``duration_s``, not the
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

_GRACE_S = 1.0  # how long an interrupted worker may take to stop on its own


def _child(conn: Connection, source: str, archive: str, config: BackupConfig) -> None:
    """The worker: one backup, its (seconds, archive bytes) or its error sent back."""
    logging.getLogger().addHandler(logging.NullHandler())  # quiet, as the CLI's captured stderr
    try:
        _hold_ctrl_c(False)  # a Ctrl-C held back while this interpreter started arrives now
        from dsbackup.allocator import tune_allocator
        from dsbackup.pipeline.scanchoice import prestart_workers

        tune_allocator()  # as the CLI does at start
        # as `dsbackup backup` does: the workers' zygote forked from this fresh interpreter
        prestart_workers(source, workers=config.workers, fork_zygote=True)
        from dsbackup.engine.backup import BackupManager

        meta = BackupManager(config).create_backup(source, archive)
        reply: tuple = ("ok", float(meta.statistics.duration_s), int(meta.compressed_size))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        reply = ("error", type(exc).__name__, str(exc), int(getattr(exc, "exit_code", 0) or 0))
    from dsbackup.pipeline.scanchoice import stop_workers_zygote

    stop_workers_zygote()
    try:
        conn.send(reply)
    except OSError:
        pass  # the parent is gone (interrupted): nobody to tell
    finally:
        conn.close()


def _hold_ctrl_c(hold: bool) -> frozenset[int] | None:
    """Block (``hold``) or unblock SIGINT in this thread; returns the previous mask (None
    where signal masks are not available)."""
    try:
        how = signal.SIG_BLOCK if hold else signal.SIG_UNBLOCK
        return frozenset(signal.pthread_sigmask(how, {signal.SIGINT}))
    except (AttributeError, OSError, ValueError):
        return None


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
    from multiprocessing import resource_tracker

    from dsbackup.pipeline.forkserver import start_context

    what = "calibration backup of the sample failed"
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = None
    try:
        # the worker starts with Ctrl-C held back (a signal mask survives exec): one during
        # its interpreter's start-up would abort it with a "Fatal Python error" on the
        # terminal; it takes the Ctrl-C once running (_child), and so do we, after start().
        # The resource tracker first: starting it unblocks SIGINT (bpo-33613)
        resource_tracker.ensure_running()
        mask = _hold_ctrl_c(True)
        try:
            with start_context():  # the worker runs this copy of dsbackup, not the caller's
                proc = ctx.Process(target=_child, args=(send, source, str(archive), config),
                                   name="dsbackup-tune-calibration")
                proc.start()
        except (OSError, AssertionError) as exc:  # no processes left; a daemonic caller
            proc = None
            raise BackupError(f"{what}: cannot start its worker process: {exc}") from None
        finally:
            send.close()
            if mask is not None and signal.SIGINT not in mask:
                _hold_ctrl_c(False)
        try:
            reply = recv.recv()
        except EOFError:
            reply = None
        proc.join()
    finally:
        recv.close()
        if proc is not None and proc.is_alive():  # interrupted while waiting
            proc.join(_GRACE_S)  # an interrupted worker removes its partial archive itself
            if proc.is_alive():  # no orphan keeps backing up
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
