"""Entry point: parse arguments, dispatch to a command module, map exceptions to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from dsbackup import cli
from dsbackup._version import __version__
from dsbackup.datastores._alloc import tune_allocator
from dsbackup.errors import EXIT_ERROR, EXIT_INTERRUPTED, DsBackupError

log = logging.getLogger("dsbackup")


def _command_names() -> list[str]:
    """Each command lives in dsbackup/cli/<command>.py."""
    return sorted(info.name for info in pkgutil.iter_modules(cli.__path__)
                  if not info.name.startswith("_") and info.name != "main")


def _command_modules(only: str | None = None) -> list[ModuleType]:
    names = [only] if only is not None else _command_names()
    mods = []
    for name in names:
        mod = importlib.import_module(f"dsbackup.cli.{name}")
        if hasattr(mod, "COMMAND") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: m.COMMAND)


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named on the command line, when it is a known one: only its module is
    imported (the others, the scheduler's above all, cost start-up time)."""
    for arg in argv:
        if arg in ("-h", "--help", "--version"):
            return None
        if not arg.startswith("-"):
            return arg if arg in _command_names() else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsbackup",
        description="Back up, restore, verify and migrate IPFS-style key/value datastores.",
    )
    parser.add_argument("--version", action="version", version=f"dsbackup {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules(only):
        p = sub.add_parser(mod.COMMAND, help=getattr(mod, "HELP", None),
                           description=getattr(mod, "HELP", None))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dsbackup: %(message)s"))
    root = logging.getLogger("dsbackup")
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    tune_allocator()  # large chunk buffers are reused instead of page-faulted in each time
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(args._run(args) or 0)
    except DsBackupError as exc:
        if getattr(args, "json", False):
            json.dump({"ok": False, "error": type(exc).__name__, "message": str(exc),
                       "exit_code": exc.exit_code}, sys.stdout)
            sys.stdout.write("\n")
        print(f"dsbackup: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dsbackup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
