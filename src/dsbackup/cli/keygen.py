"""`dsbackup keygen FILE`: create a random 32-byte key file for encrypted archives."""

from __future__ import annotations

import argparse
import sys

from dsbackup import write_key_file
from dsbackup.cli._common import add_json_flag, emit_json
from dsbackup.errors import ConfigError

COMMAND = "keygen"
HELP = "create a key file (32 random bytes as hex, mode 0600) for --encrypt --key-file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="key file to create (never replaces an existing file)")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    if args.file == "-":  # '-' is standard output for every other command: no file named '-'
        raise ConfigError("keygen writes a key file (mode 0600), not standard output: give "
                          "its path (./- for a file named '-')")
    write_key_file(args.file)
    if args.json:
        emit_json(COMMAND, {"ok": True, "file": args.file})
    else:
        print(f"{args.file}: new key file (mode 0600); keep a copy apart from the archives: "
              "without it they cannot be read", file=sys.stderr)
    return 0
