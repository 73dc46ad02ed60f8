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
