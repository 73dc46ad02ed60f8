"""A dead writer's temp file, as `backup --resume` finds it: named for a process that has
exited (storage/tempfiles.py), holding a prefix of an archive, with the resume notes an
encrypted writer keeps in extended attributes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dsbackup.storage import resumestate


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def temp_files(d: Path, name: str) -> list[str]:
    """The temp files of archive `name` in directory `d`."""
    from dsbackup.storage.tempfiles import temp_prefix

    return sorted(n for n in os.listdir(d) if n.startswith(temp_prefix(d / name)))


def dead_writer_file(final: Path, data: bytes, *, sealing: bytes | None = None,
                     epochs: list | None = None) -> Path:
    """The temp file a killed writer of `final` left, holding `data`; `sealing` and `epochs`
    are the encrypted writer's notes (skips the test where the file system has no user
    extended attributes)."""
    tmp = final.with_name(f".{final.name}.tmp-{dead_pid()}-0123456789ab")
    tmp.write_bytes(data)
    try:
        if sealing is not None:
            os.setxattr(tmp, resumestate.SEALING_XATTR, sealing)
        if epochs is not None:
            os.setxattr(tmp, resumestate.EPOCHS_XATTR, json.dumps(epochs).encode())
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            pytest.skip("no user extended attributes on this filesystem")
        raise
    return tmp


def temp_paths(d: Path, name: str) -> list[Path]:
    """The temp files of archive `name` in directory `d`, as paths."""
    return [d / n for n in temp_files(d, name)]


def sigkill_when_temp_over(cmd: list[str], env: dict[str, str], out: Path, name: str,
                           size: int) -> Path:
    """Start `cmd` (a backup to `out/name`), SIGKILL it once its temp file is over `size`
    bytes; that temp file, as the kill left it."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        tmps = temp_paths(out, name)
        try:
            if tmps and tmps[0].stat().st_size > size:
                break
        except FileNotFoundError:  # renamed by a resume meanwhile
            pass
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / name).exists(), "killed too late: the backup had finished"
    [tmp] = temp_paths(out, name)
    return tmp
