"""A profile's ``credential_process``: a command whose standard output is the credentials
(docs/STORAGE.md "Credentials from a profile").

The command line is split as a POSIX shell would split words (no shell runs it: no
variables, no ``~``), run with the environment of dsbackup, standard input from
``/dev/null`` (a backup reading ``-`` keeps its stream, and nothing can prompt), and its
output read as AWS documents it: a JSON object with ``Version`` 1, ``AccessKeyId``,
``SecretAccessKey``, optionally ``SessionToken`` and ``Expiration`` (ISO 8601; without it the
credentials are used for the whole run; with it they are asked for again before they
expire). A command that fails, prints something else, or runs longer than
``DSBACKUP_S3_CREDENTIAL_PROCESS_TIMEOUT`` seconds (default 60; it is killed, with anything
it started in its process group) is an error of one line: its exit status and the last line
of its standard error, never its standard output (which may hold a secret).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
from typing import IO

from dsbackup.storage.s3config import register_secret, scrub
from dsbackup.storage.s3fetch import Credentials, _Failed, _made, _number

TIMEOUT_S = 60.0
MAX_OUTPUT = 1 << 20  # bytes of standard output (and of standard error) kept


class CredentialProcess:
    def __init__(self, command: str, where: str) -> None:
        self.where = where
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise _Failed(f"credential_process of {where}: cannot split the command line "
                          f"({exc})") from None
        if not self.argv:
            raise _Failed(f"credential_process of {where} is empty")
        self.name = f"credential_process of {where} ({os.path.basename(self.argv[0])})"

    def __call__(self) -> Credentials:
        timeout = _number("DSBACKUP_S3_CREDENTIAL_PROCESS_TIMEOUT", TIMEOUT_S)
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            raise _Failed(f"cannot run {self.argv[0]}: {exc.strerror or exc}") from None
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [threading.Thread(target=_drain, args=(pipe, into), daemon=True)
                   for pipe, into in ((proc.stdout, out), (proc.stderr, err))]
        for r in readers:
            r.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise _Failed(f"the command gave no credentials within {timeout:g} s "
                          "(DSBACKUP_S3_CREDENTIAL_PROCESS_TIMEOUT); killed") from None
        finally:
            if proc.poll() is None:  # Ctrl-C while waiting: the command ends with us
                _kill(proc)
            for r in readers:  # (a child it left holding the pipes: not waited for long)
                r.join(5)
        doc = _parse(b"".join(out))  # secrets registered before anything is said
        if proc.returncode != 0:
            raise _Failed(_exit(proc.returncode) + _last_line(b"".join(err)))
        if doc is None:
            raise _Failed("the command's output is not a JSON object" + _last_line(
                b"".join(err)))
        version = doc.get("Version")
        if version != 1:
            raise _Failed(f"the command's output has Version {json.dumps(version)[:20]}; "
                          "expected 1")
        return _made(doc.get("AccessKeyId"), doc.get("SecretAccessKey"),
                     doc.get("SessionToken"), doc.get("Expiration"), "the command",
                     lasting=True)


def _drain(pipe: IO[bytes] | None, into: list[bytes]) -> None:
    """Read `pipe` to its end, keeping its first MAX_OUTPUT bytes (a command that prints
    without end does not fill the memory before its timeout)."""
    if pipe is None:
        return
    kept = 0
    with pipe:
        while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
            if kept < MAX_OUTPUT:
                into.append(chunk[:MAX_OUTPUT - kept])
                kept += len(into[-1])


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _parse(out: bytes) -> dict | None:
    try:
        doc = json.loads(out)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    for k in ("SecretAccessKey", "SessionToken", "AccessKeyId"):
        v = doc.get(k)
        register_secret(v if isinstance(v, str) else None)
    return doc


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"the command was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the command was killed by signal {-code}"
    return f"the command exited with status {code}"


def _last_line(err: bytes) -> str:
    lines = [ln.strip() for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    return f": {scrub(lines[-1])[:200]}" if lines else ""
