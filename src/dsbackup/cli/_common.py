"""Helpers shared by command modules: JSON output, key display, progress bars, signals."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dsbackup.metadata import Progress

JSON_SCHEMA_VERSION = 1


def emit_json(command: str, payload: dict[str, Any]) -> None:
    """Machine output: one JSON object on stdout with a stable, versioned shape."""
    out = {"schema": JSON_SCHEMA_VERSION, "command": command, **payload}
    json.dump(out, sys.stdout, default=_default, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _default(o: Any) -> Any:
    if isinstance(o, bytes):
        return show_key(o)
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def show_key(k: bytes) -> str:
    return k.decode("utf-8", "backslashreplace")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


@contextmanager
def progress_bar(enabled: bool, description: str) -> Iterator[Any]:
    """A rich progress bar with rate and ETA on a terminal; a no-op callback otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                       console=None)
    with bar:
        task = bar.add_task(description, total=None)

        def update(p: Progress) -> None:
            bar.update(task, completed=p.bytes, total=p.total_bytes)

        yield update


@contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set the returned event so the operation stops cleanly."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        cancel.set()

    for s in old:
        signal.signal(s, handler)
    try:
        yield cancel
    finally:
        for s, h in old.items():
            signal.signal(s, h)
