"""Key options shared by the commands that read or write encrypted archives
(docs/ENCRYPTION.md): --passphrase-file, DSBACKUP_PASSPHRASE, --key-file, or a prompt on a
terminal. There is deliberately no option that takes a passphrase as its value: arguments are
visible to every user in /proc/PID/cmdline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

import dsbackup
from dsbackup.errors import ConfigError, KeyRequiredError

log = logging.getLogger("dsbackup.cli")


def add_key_options(p: argparse.ArgumentParser, *, encrypt: bool = False) -> None:
    g = p.add_argument_group("encryption (docs/ENCRYPTION.md)")
    if encrypt:
        g.add_argument("--encrypt", action="store_true",
                       help="write an encrypted archive (AES-256-GCM; key from the options "
                       "below, else DSBACKUP_PASSPHRASE, else a prompt on a terminal)")
    g.add_argument("--passphrase-file", default=None, metavar="FILE",
                   help="read the passphrase from FILE (one trailing newline is dropped)")
    g.add_argument("--key-file", default=None, metavar="FILE",
                   help="a 32-byte key file (raw, or 64 hex digits); see `dsbackup keygen`")


def _prompt(confirm: bool) -> Callable[[], dsbackup.KeyMaterial]:
    def ask() -> dsbackup.KeyMaterial:
        try:
            import getpass  # termios: only when a passphrase is asked for

            first = getpass.getpass("passphrase: ").encode()
            if confirm and getpass.getpass("passphrase again: ").encode() != first:
                raise ConfigError("the passphrases differ")
        except EOFError:
            raise ConfigError("no passphrase given") from None
        buf = bytearray(first)
        del first
        try:
            return dsbackup.KeyMaterial(passphrase=buf)
        finally:
            buf[:] = bytes(len(buf))
    return ask


def key_from_args(args: argparse.Namespace, *, writing: bool = False,
                  ) -> tuple[dsbackup.KeyMaterial | None, Callable[[], dsbackup.KeyMaterial] | None]:
    """(key material, prompt): the material when an option or the environment gives one;
    else a prompt to ask for it when needed (only on a terminal), else None."""
    pfile = getattr(args, "passphrase_file", None)
    kfile = getattr(args, "key_file", None)
    if pfile and kfile:
        raise ConfigError("give --passphrase-file or --key-file, not both")
    if hasattr(args, "encrypt") and not writing:
        # backup: a key option alone would write a plain archive, exit 0, where the user
        # meant an encrypted one (a parent's key is needed only by an encrypted incremental)
        if pfile or kfile:
            raise ConfigError(f"{'--passphrase-file' if pfile else '--key-file'} without "
                              "--encrypt: the archive would not be encrypted; add --encrypt "
                              "(or leave the key option out for a plain archive)")
        if os.environ.get(dsbackup.PASSPHRASE_ENV):
            log.warning("%s is set, but --encrypt is not given: %s is not encrypted",
                        dsbackup.PASSPHRASE_ENV, getattr(args, "archive", "the archive"))
    if pfile:
        return dsbackup.load_passphrase_file(pfile), None
    if kfile:
        return dsbackup.load_key_file(kfile), None
    env = os.environ.get(dsbackup.PASSPHRASE_ENV)
    if env:  # its bytes, as a passphrase file's (not UTF-8 text: os.environ's surrogates)
        return dsbackup.KeyMaterial(passphrase=os.fsencode(env)), None
    if sys.stdin.isatty() and sys.stderr.isatty():
        prompt = _prompt(confirm=writing)
        return (prompt(), None) if writing else (None, prompt)
    if writing:
        raise KeyRequiredError("--encrypt needs a key: give --passphrase-file, "
                               "DSBACKUP_PASSPHRASE or --key-file (no terminal to prompt on)")
    return None, None
