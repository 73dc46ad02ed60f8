"""Entry point: parse arguments, dispatch to a command module, map exceptions to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib
import importlib.machinery
import logging
import os
import select
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from dsbackup import cli, filemodes
from dsbackup._version import __version__
from dsbackup.allocator import single_arena, tune_allocator
from dsbackup.cli._common import (
    emit_json,
    escape_text,
    reopen_closed_std_fds,
    stop_signals_interrupt,
)
from dsbackup.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, ConfigError, DsBackupError

log = logging.getLogger("dsbackup")

# numpy (the archive index tables) starts one OpenBLAS thread per core when it is imported,
# and dsbackup multiplies no matrices: on 2 cores one thread halves that import's time (~60 ms
# of every command's start-up, docs/PERFORMANCE.md). Set before any command imports numpy; a
# value the user set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _command_names() -> list[str]:
    """Each command lives in dsbackup/cli/<command>.py: the module names of the package's
    directory, as pkgutil.iter_modules finds them (any module suffix), without importing
    pkgutil (importlib.util: ~2 ms of the console script's start-up)."""
    suffixes = sorted(importlib.machinery.all_suffixes(), key=len, reverse=True)
    names = set()
    for directory in cli.__path__:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            suffix = next((s for s in suffixes if entry.endswith(s)), None)
            name = entry[:-len(suffix)] if suffix else ""
            if name.isidentifier() and not name.startswith("_") and name != "main":
                names.add(name)
    return sorted(names)


def _command_modules(only: str | None = None) -> list[ModuleType]:
    """Every command's module, or only `only`'s ("": none, for --version)."""
    names = ([only] if only else []) if only is not None else _command_names()
    mods = []
    for name in names:
        mod = importlib.import_module(f"dsbackup.cli.{name}")
        if hasattr(mod, "COMMAND") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: m.COMMAND)


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named on the command line, when it is a known one: only its module is
    imported (the others, the scheduler's above all, cost start-up time); "" for --version
    before any command (no command's module: it prints the version and ends)."""
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            return None
        if arg == "--version":
            return ""
        if arg in ("--umask", "--s3-endpoint", "--s3-stale-hours", "--s3-profile"):
            next(args, None)  # its value
        elif not arg.startswith("-"):
            return arg if arg in _command_names() else None
    return None


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns (COLUMNS, else the terminal of stdout, else 80)
    without importing shutil (bz2, lzma, fnmatch), which argparse's formatter imports for it
    at every add_argument: a few ms of every command's start-up."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr (exit 2), naming the command and its --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"expected an octal umask such as 077 or 022: {text!r}")
    return value


def _global_options(p: argparse.ArgumentParser, default: Any) -> None:
    """Options taken before and after the command (`dsbackup -v ls A`, `dsbackup ls -v A`);
    after the command they default to SUPPRESS so they do not hide the ones before it."""
    p.add_argument("-v", "--verbose", action="count", default=0 if default is None else default,
                   help="more log output")
    p.add_argument("--umask", type=_umask, default=default, metavar="OCTAL",
                   help="mode of archives, journals and spill files: 0666 minus this umask "
                        "(default 077: owner only)")
    p.add_argument("--s3-endpoint", default=default, metavar="URL",
                   help="endpoint of an S3-compatible server for s3:// locations (path-style "
                        "addressing; http only on the loopback address); default: "
                        "AWS_ENDPOINT_URL or ~/.aws/config (docs/STORAGE.md)")
    p.add_argument("--s3-profile", default=default, metavar="NAME",
                   help="the AWS profile of s3:// locations' credentials and settings "
                        "(keys, role_arn, credential_process, SSO; AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY are then not used); default: AWS_PROFILE or "
                        "default (docs/STORAGE.md)")
    p.add_argument("--s3-stale-hours", default=default, metavar="HOURS",
                   help="a backup to (or prune of) an s3:// prefix aborts dsbackup's unfinished "
                        "multipart uploads there idle this long (killed backups'); 'off': "
                        "never; default: DSBACKUP_S3_STALE_HOURS or 24")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsbackup",
        description="Back up, restore, verify and migrate IPFS-style key/value datastores.",
    )
    parser.add_argument("--version", action="version", version=f"dsbackup {__version__}")
    _global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _command_modules(only):
        p = sub.add_parser(mod.COMMAND, help=getattr(mod, "HELP", None),
                           description=getattr(mod, "HELP", None))
        _global_options(p, argparse.SUPPRESS)
        mod.add_arguments(p)
        operands = [a.dest for a in p._actions
                    if not a.option_strings and a.dest != argparse.SUPPRESS]
        p.set_defaults(_run=mod.run, _operands=operands,
                       _prepare=getattr(mod, "prepare", None),
                       _no_teardown=getattr(mod, "EXIT_WITHOUT_TEARDOWN", False))
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dsbackup: %(message)s"))
    root = logging.getLogger("dsbackup")
    root.handlers[:] = [handler]
    root.setLevel(level)


# arguments that name files or directories: a leading ~ is expanded as the shell would (for
# `--parent=~/a.tar.gz` and quoted paths); datastore URIs are expanded by the registry
PATH_ARGS = ("archive", "out", "directory", "plan", "parent", "parent_dir", "state", "config",
             "plot", "metrics_textfile", "state_dir")


def _expand_user_paths(args: argparse.Namespace) -> None:
    def expand(v: Any) -> Any:
        if isinstance(v, (str, os.PathLike)) and os.fspath(v).startswith("~"):
            return type(v)(os.path.expanduser(os.fspath(v)))
        return v

    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, [expand(v) for v in value])
        elif value is not None:
            setattr(args, name, expand(value))


def _command_label(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)  # `schedule list` and the like
    return f"{args.command} {action}" if isinstance(action, str) else str(args.command)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (`dsbackup ls A | head -1`)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def describe_error(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """One line and an exit code for an exception that reached the command line: the
    package's errors carry their own code; an OSError or ValueError is an error of the
    environment or an input (exit 2), named by its file or, without one, by the command's
    operands, and so is a MemoryError; anything else is a bug, shown as one line (the
    traceback with -v)."""
    if isinstance(exc, DsBackupError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            what = "no space left on device"
        if exc.filename is not None:
            names = [os.fsdecode(exc.filename)]
            if exc.filename2 is not None:
                names.append(os.fsdecode(exc.filename2))
            return f"{' -> '.join(names)}: {what}", EXIT_ERROR
        return f"{_operands_of(args)}: {what}", EXIT_ERROR
    if isinstance(exc, ValueError):
        return f"{_operands_of(args)}: {exc}", EXIT_ERROR
    if isinstance(exc, MemoryError):  # a ulimit, a small machine: the environment's
        detail = f" ({exc})" if str(exc) else ""
        return f"{_operands_of(args)}: not enough memory{detail}", EXIT_ERROR
    return (f"internal error: {type(exc).__name__}: {exc} (a bug: rerun with -v for the "
            "traceback and report it)"), EXIT_ERROR


def _operands_of(args: argparse.Namespace) -> str:
    ops = [str(getattr(args, d)) for d in getattr(args, "_operands", [])
           if isinstance(getattr(args, d, None), (str, os.PathLike))]
    return " ".join([_command_label(args), *ops])


def main(argv: Sequence[str] | None = None, *, freeze_imports: bool = False) -> int:
    """`freeze_imports`: the process is the command (cli/_entry.py), which loaded the modules
    with garbage collection off; see _freeze_imports."""
    closed = reopen_closed_std_fds()
    try:
        with stop_signals_interrupt():
            return _main(argv, freeze_imports, closed)
    except KeyboardInterrupt:  # Ctrl-C while the command's modules are imported (numpy ...)
        with contextlib.suppress(OSError):
            print("dsbackup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None, freeze_imports: bool = False,
          closed: set[int] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(_command_in(argv))
        args = parser.parse_args(argv)
    finally:
        if freeze_imports:
            _freeze_imports()
    refused = _refuse_closed_stream(args, closed) if closed else None
    if refused is not None:
        return refused
    _setup_logging(args.verbose)
    if args.umask is not None:
        filemodes.set_private_umask(args.umask)
    _expand_user_paths(args)
    endpoint, stale = getattr(args, "s3_endpoint", None), getattr(args, "s3_stale_hours", None)
    profile = getattr(args, "s3_profile", None)
    if endpoint or stale or profile:
        from dsbackup.storage import check_endpoint, configure, parse_stale_hours

        try:
            if endpoint:
                check_endpoint(endpoint)
        except DsBackupError as exc:
            parser.error(str(exc))
        try:
            if stale:
                parse_stale_hours(stale)
        except DsBackupError as exc:
            parser.error(f"--s3-stale-hours: {exc}")
        try:  # reads the DSBACKUP_S3_* environment too: a bad value there is one error line
            configure(endpoint, stale_hours=stale, profile=profile)
        except DsBackupError as exc:
            return _fail(exc, args)
    tune_allocator()  # large chunk buffers are reused instead of page-faulted in each time
    if args.command in ("backup", "restore", "verify", "schedule"):
        # buffers allocated and freed in threads: a flat peak (allocator.py); the scheduler
        # daemon runs backups and verifies in threads for months (PERFORMANCE.md, "Memory
        # over rounds in one process")
        single_arena()
    if not getattr(args, "_run", None):
        parser.error(f"give a command: {', '.join(_command_names())}")
    prepare = getattr(args, "_prepare", None)  # before the key is read (cli/backup.py)
    try:
        with prepare(args) if prepare else contextlib.nullcontext():
            rc = int(_run_with_key(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        if freeze_imports and rc == EXIT_OK and getattr(args, "_no_teardown", False):
            _exit_without_teardown(rc)
        return rc
    except KeyboardInterrupt:
        print("dsbackup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        if _stdout_closed():  # the reader of our output is gone: quiet, like other tools
            _quiet_stdout()
            return EXIT_OK
        return _fail(exc, args)
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        return _fail(exc, args)
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # a panic in a Rust extension (pyo3's PanicException) is no
        return _fail(exc, args)   # Exception: still a bug of one line, not a traceback


def _freeze_imports() -> None:
    """Move what start-up made (modules, classes, functions: objects that live as long as the
    process) out of the garbage collector's view, then collect as usual: no later collection,
    nor the one at exit, walks them again (~12 ms of every command's CPU,
    docs/PERFORMANCE.md), and forks of the CLI (the zygote and its workers) leave their pages
    shared. The command's entry (cli/_entry.py) turned collection off while they loaded."""
    gc.freeze()
    gc.enable()


def _exit_without_teardown(rc: int) -> None:
    """End the process now, as the interpreter would, less its teardown: with no other thread
    left, the exit handlers run (logging's flush ...) and both streams are flushed, then
    os._exit skips freeing every module, object and arena one by one (5-10 ms at the end of a
    verify or restore, docs/PERFORMANCE.md). For commands whose every file is closed and
    synced when they return (EXIT_WITHOUT_TEARDOWN in their module), on success only;
    returns (the ordinary exit follows) when another thread runs or a stream cannot flush."""
    if threading.active_count() > 1:
        return
    import atexit

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # before the exit handlers: the ordinary exit runs them once
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        os._exit(120)  # what the interpreter exits with when its last flush fails
    os._exit(rc)


def _refuse_closed_stream(args: argparse.Namespace, closed: set[int]) -> int | None:
    """`-` for an archive read from a closed standard input, or written to a closed
    standard output (now /dev/null: the archive would be thrown away and called done)."""
    writes = {"backup": "archive", "consolidate": "out"}.get(args.command)
    for dest in ("archive", "out"):
        if getattr(args, dest, None) != "-":
            continue
        if dest == writes and 1 in closed:
            return _fail(ConfigError("-: standard output is closed; redirect it to a file or "
                                     "a pipe"), args)
        if dest != writes and 0 in closed:
            return _fail(ConfigError("-: standard input is closed; pipe an archive into it"),
                         args)
    return None


def _keyed_archive(args: argparse.Namespace) -> tuple[str | None, str]:
    """(archive, option): the archive a reading command (restore, verify, ls, inspect,
    consolidate) was given --passphrase-file or --key-file for, which must be encrypted
    (dsbackup.expecting_encrypted), else None. An archive of the Go tool, never encrypted, is
    refused here. Not for DSBACKUP_PASSPHRASE, often set for every command, nor for backup."""
    option = ("--passphrase-file" if getattr(args, "passphrase_file", None) else
              "--key-file" if getattr(args, "key_file", None) else "")
    archive = getattr(args, "archive", None)
    if not option or archive is None or hasattr(args, "encrypt"):
        return None, option
    from dsbackup import is_go_archive
    from dsbackup.errors import PlainArchiveError
    from dsbackup.storage import as_location, is_remote, is_stream

    loc = as_location(archive)
    if not is_remote(loc) and not is_stream(loc) and is_go_archive(loc):
        raise PlainArchiveError.given(str(loc), option)
    return archive, option


def _run_with_key(args: argparse.Namespace) -> int:
    """Run the command with its key material (commands with the key options, cli/_keys.py);
    the secrets are zeroed when it ends."""
    if not hasattr(args, "passphrase_file"):
        return args._run(args)
    from dsbackup import expecting_encrypted, using_key
    from dsbackup.cli._keys import key_from_args

    writing = bool(getattr(args, "encrypt", False))
    material, prompt = key_from_args(args, writing=writing)
    args.encryption = material if writing else None
    try:
        with using_key(material, prompt=prompt), expecting_encrypted(*_keyed_archive(args)):
            return args._run(args)
    finally:
        if material is not None:
            material.close()


def _fail(exc: BaseException, args: argparse.Namespace) -> int:
    from dsbackup.storage import scrub

    message, code = describe_error(exc, args)
    message = scrub(message)  # no credential in any message (docs/STORAGE.md)
    if args.verbose and not isinstance(exc, DsBackupError):
        log.warning("traceback of the error below", exc_info=exc)
    if getattr(args, "json", False):
        try:
            emit_json(_command_label(args), {"ok": False, "error": type(exc).__name__,
                                             "message": message, "exit_code": code})
        except OSError:  # a closed pipe, a full disk (> /dev/full): stderr still says it
            _quiet_stdout()
    with contextlib.suppress(OSError):  # stderr may be a closed pipe too
        # a message may quote a hostile key or path: no control character reaches the terminal
        print(f"dsbackup: error: {escape_text(message, backslash=False)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
