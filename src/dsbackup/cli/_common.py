"""Helpers shared by command modules: JSON output, key display, progress bars, signals."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: metadata (dataclasses, datetime) is not start-up's
    from dsbackup.metadata import Progress

JSON_SCHEMA_VERSION = 1

log = logging.getLogger("dsbackup.cli")


def reopen_closed_std_fds() -> set[int]:
    """Standard input, output or error closed by the caller (``2>&-``, a daemon's closed
    descriptors) made every command fail with an internal AttributeError on ``None`` (a
    backup with ``2>&-`` wrote no archive), and left descriptors 0-2 free for the next open
    file (an archive's temp file as descriptor 1). Each closed one is opened on /dev/null;
    the set of those that were closed is returned."""
    closed = set()
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            closed.add(fd)
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - for the process
    return closed


def emit_json(command: str, payload: dict[str, Any]) -> None:
    """Machine output: one JSON object on stdout with a stable, versioned shape."""
    out = {"schema": JSON_SCHEMA_VERSION, "command": command, **payload}
    try:
        json.dump(out, sys.stdout, default=_default, sort_keys=True)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away: the error path ends quietly
    except OSError as exc:  # > /dev/full, a full disk: name it, not the command's operands
        raise OSError(exc.errno, exc.strerror, "standard output") from exc


def _default(o: Any) -> Any:
    if isinstance(o, bytes):
        return show_key(o)
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def show_key(k: bytes) -> str:
    """A key as JSON carries it: UTF-8, with bytes that are not UTF-8 as ``\\xNN``."""
    return k.decode("utf-8", "backslashreplace")


# Untrusted text on a terminal (docs/CLI.md, "Keys and names on the terminal"): a backslash,
# C0 controls and DEL become \xNN, C1 controls, Unicode line separators and bidi controls
# \uNNNN, bytes that are not UTF-8 \xNN; everything else is shown as is. Reversible: \\ is a
# backslash, \xNN the byte NN, \uNNNN the UTF-8 of that code point.
_PLAIN_KEY = re.compile(rb"[\x00-\x1f\x7f-\xff\\\\]")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")


def _escape_char(m: re.Match[str], from_bytes: bool) -> str:
    c = ord(m.group())
    if c == 0x5C:
        return "\\\\"
    if c < 0x20 or c == 0x7F:
        return f"\\x{c:02x}"
    if from_bytes and 0xDC80 <= c <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{c - 0xDC00:02x}"
    return f"\\u{c:04x}"


def escape_key(k: bytes) -> str:
    """A key for plain output: control characters and backslashes escaped (reversible)."""
    if _PLAIN_KEY.search(k) is None:
        return k.decode("ascii")  # the usual key: printable ASCII, nothing to escape
    return _UNSAFE.sub(lambda m: _escape_char(m, True), k.decode("utf-8", "surrogateescape"))


def escape_text(s: object, *, backslash: bool = True) -> str:
    """A manifest string (or any untrusted text) for plain output, escaped as keys are.
    ``backslash=False`` leaves backslashes alone (messages quoting ``b'\\xff'``): not
    reversible, but no control character gets through either."""
    if backslash:
        return _UNSAFE.sub(lambda m: _escape_char(m, False), str(s))
    return _UNSAFE.sub(lambda m: m.group() if m.group() == "\\" else _escape_char(m, False),
                       str(s))


def unescape_key(s: str) -> bytes:
    """The inverse of :func:`escape_key` (for tools and tests)."""
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
        elif s[i + 1] == "\\":
            out += b"\\"
            i += 2
        elif s[i + 1] == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        else:  # \uNNNN
            out += chr(int(s[i + 2:i + 6], 16)).encode("utf-8", "surrogatepass")
            i += 6
    return bytes(out)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1 (`verify --sample 0.05`)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, such as 0.05: "
                                         f"{text!r}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port number (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535: {text!r}")
    return value


def warn_unanchored(option: str, patterns: list[str]) -> bool:
    """Warn about each glob that can match no key (keys start with /); True if there was one.
    A glob matches a whole key, so it must start with / or *."""
    # an empty glob is an error of its own (BackupConfig, key_matcher): no "did you mean '/'?"
    bad = [p for p in patterns if p and not p.startswith(("/", "*"))]
    for p in bad:
        log.warning("%s %r can match no key: keys start with / (did you mean %r?)",
                    option, p, "/" + p)
    return bool(bad)


def warn_matched_nothing(what: str, prefix: str | None = None) -> None:
    """`prefix`: the --prefix given (alone): the hint is then that it selects the children
    of a key, not keys that start with it ("keys start with /" was wrong: blocks/K01 is
    /blocks/K01)."""
    if prefix is not None and prefix.strip("/"):
        log.warning("%s matched no key; --prefix KEY selects the children of KEY (%s/...), "
                    "not keys that start with it", what, "/" + prefix.strip("/"))
    else:
        log.warning("%s matched no key; keys start with /", what)


PARENT_DIR_HELP = ("incremental archives: where to look for parent archives besides the "
                   "archive's directory; repeatable")


def add_parent_dir_option(parser: Any, help: str = PARENT_DIR_HELP) -> None:
    """``--parent-dir DIR`` (repeatable): where the commands that read or make an incremental
    archive look for its parents."""
    parser.add_argument("--parent-dir", action="append", default=[], metavar="DIR", help=help)


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


def _stop_signals() -> list[signal.Signals]:
    """SIGTERM, SIGINT and SIGHUP (a closed terminal), less those ignored (``nohup``: the
    caller wants the command to outlive the terminal)."""
    return [s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            if signal.getsignal(s) is not signal.SIG_IGN]


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop any command as Ctrl-C does (KeyboardInterrupt: its temp files
    removed, exit 130) instead of killing it where it stands (exit 143/129, an archive's
    temp file left behind). Commands with their own handling (cancel_on_signals) override it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.getsignal(s) for s in _stop_signals() if s != signal.SIGINT}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """SIGTERM, SIGINT and SIGHUP (unless ignored) set the returned event so the operation
    stops cleanly."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return
    old = {s: signal.getsignal(s) for s in _stop_signals()}

    def handler(signum: int, frame: Any) -> None:
        cancel.set()

    for s in old:
        signal.signal(s, handler)
    try:
        yield cancel
    finally:
        for s, h in old.items():
            signal.signal(s, h)
