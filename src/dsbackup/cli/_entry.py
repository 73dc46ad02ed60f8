"""The `dsbackup` command (the console script and python -m dsbackup)."""

from __future__ import annotations

import gc
import sys


def run() -> int:
    """No garbage collection while the command's modules load: imports make many objects
    that live as long as the process and almost no garbage. Once they are loaded
    (dsbackup.cli.main), they are frozen out of the collector's view and collection resumes."""
    gc.disable()
    try:
        from dsbackup.cli.main import main
    except KeyboardInterrupt:  # Ctrl-C at start-up: no traceback (cli.main does the rest)
        gc.enable()
        print("dsbackup: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        gc.enable()
        raise
    return main(freeze_imports=True)


def console() -> int:
    """The process's entry (the console script, python -m dsbackup): run(), then end the
    process without the interpreter's teardown."""
    code = run()
    _exit_without_teardown(code)
    return code  # a standard stream could not be flushed: the usual exit reports it


def _exit_without_teardown(code: int) -> None:
    """End the process as a normal exit does, less the interpreter's teardown (freeing every
    module and object: 15-25 ms of a backup's end on the 2-core VM, docs/PERFORMANCE.md
    "Blocks backup against the 2-process ceiling"): non-daemon threads joined, the atexit
    handlers run (the workers' zygote stopped, logging flushed, multiprocessing's), the
    standard streams flushed; then os._exit. Returns only when a stream cannot be flushed."""
    import atexit
    import os
    import threading

    me = threading.current_thread()
    for t in threading.enumerate():
        if t is not me and not t.daemon:
            t.join()
    atexit._run_exitfuncs()  # and forgets them: the usual exit does not run them twice
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: Python's own exit says so, as it would
        return
    os._exit(code if isinstance(code, int) else 0)
