"""The fork server that starts the parallel scan's worker processes where there is no zygote.

The CLI forks its workers from a zygote (zygote.py); a library caller, the scheduler daemon, or
a process with threads gets them from this server. Workers start as forks of a server process that has imported the worker code once
(multiprocessing's "forkserver"; never a fork of a process that holds an LMDB environment).
Booting that server (an interpreter plus the worker's imports) takes about as long as the
CLI's own start-up, and the workers wait for it. So where cores are to spare and the source
looks like one the workers will scan, `dsbackup backup` starts the server before it imports the
backup code (``prestart``); the server boots meanwhile and the parallel scan finds it running.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from pathlib import Path

log = logging.getLogger(__name__)

# what the server imports once, before it forks any worker
PRELOAD = ["dsbackup.pipeline.worker", "dsbackup.datastores"]
# prestart only with this many usable CPUs: on fewer the booting server competes with the
# CLI's own start-up (on 2 cores: no gain on a 256 MiB store)
PRESTART_MIN_CPUS = 4
# start_context swaps process-wide state: one thread at a time (re-entrant for nesting)
_swap_lock = threading.RLock()


def _forget_server_in_child() -> None:
    """After os.fork: the fork server is the parent's child, not ours. multiprocessing keeps
    its pid, and its next ensure_running() calls waitpid() on it, which fails with ECHILD: a
    program that forked after a parallel backup had every parallel backup in the child fail
    ("[Errno 10] No child processes"). The child starts a server of its own instead (the
    parent's keeps running for the parent); a lock a parent's thread held is made anew."""
    global _swap_lock
    _swap_lock = threading.RLock()
    fs = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    if fs is None or getattr(fs, "_forkserver_pid", None) is None:
        return
    alive = getattr(fs, "_forkserver_alive_fd", None)
    if alive is not None:
        try:
            os.close(alive)  # our copy only: the server stops when the parent closes its own
        except OSError:
            pass
    fs._forkserver_address = fs._forkserver_alive_fd = fs._forkserver_pid = None
    fs._lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_server_in_child)


def context() -> BaseContext:
    """The forkserver context, its server set to preload the worker code."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


@contextmanager
def start_context() -> Iterator[None]:
    """Start the server and the workers so that they run exactly this copy of dsbackup, and
    nothing else.

    - multiprocessing's fork server and spawn re-run the parent's main script in every child,
      which breaks callers whose script has no `if __name__ == "__main__"` guard and costs
      start-up time; our workers need only dsbackup's own modules, so __main__ is hidden.
    - Python < 3.12's fork server ignores the parent's sys.path when it preloads modules, so
      it could preload another installed copy of dsbackup: the directory this copy was
      imported from goes first on PYTHONPATH while the fork server starts.

    Both are process-wide, so one thread at a time holds the context: two backups starting
    their workers side by side each restored what the other had set, and left __main__ an
    empty module and PYTHONPATH changed for good.
    """
    with _swap_lock:
        yield from _swapped()


def _swapped() -> Iterator[None]:
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    old_path = os.environ.get("PYTHONPATH")
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = root + (os.pathsep + old_path if old_path else "")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main
        else:
            sys.modules.pop("__main__", None)
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def prestart_wanted() -> bool:
    """Whether to boot the server before it is needed: ``DSBACKUP_PRESTART=1`` or ``0``
    decides; unset, with PRESTART_MIN_CPUS usable CPUs or more."""
    forced = os.environ.get("DSBACKUP_PRESTART", "")
    if forced in ("0", "1"):
        return forced == "1"
    return _usable_cpus() >= PRESTART_MIN_CPUS


def prestart() -> None:
    """Launch the fork server now and return at once (it boots in the background). Where it
    cannot be launched, nothing happens: the parallel scan starts it when it needs it."""
    from multiprocessing import forkserver

    context()
    try:
        with start_context():
            forkserver.ensure_running()
    except OSError as exc:
        log.debug("could not start the fork server early: %s", exc)
        return
    log.debug("fork server %s started early", server_pid())


def server_pid() -> int | None:
    """The running fork server's process id (for the debug log; None if unknown)."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
