"""What a temp file keeps about its own writing for `backup --resume` (docs/FORMAT.md §11.5),
as user extended attributes of the file (they follow its inode through the resume's rename):

- ``user.dsbackup.resumed``: the `resumed` entries of the runs that continued it (JSON list);
- ``user.dsbackup.sealing`` (encrypted archives only): ``writing`` while chunks are sealed,
  ``finishing`` once the writer is about to seal its index (made durable first). A resume of
  an encrypted temp file needs ``writing``: that is how it knows which nonce epochs were used
  and that no index or summary was ever sealed (§11.4).

Both are removed before the finished archive is put in place.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

EPOCHS_XATTR = "user.dsbackup.resumed"
SEALING_XATTR = "user.dsbackup.sealing"
WRITING, FINISHING = b"writing", b"finishing"


def load_epochs(fd: int) -> list[dict[str, Any]]:
    try:
        epochs = json.loads(os.getxattr(fd, EPOCHS_XATTR))
    except (OSError, ValueError):
        return []
    return epochs if isinstance(epochs, list) else []


def save_epochs(fd: int, epochs: list[dict[str, Any]], *, durable: bool = False) -> None:
    """Record the resume history. `durable`: fsync it, and raise OSError when it cannot be
    recorded (an encrypted archive's epoch must be on disk before its first member)."""
    try:
        os.setxattr(fd, EPOCHS_XATTR, json.dumps(epochs).encode())
        if durable:
            os.fsync(fd)
    except OSError as exc:
        if durable:
            raise
        log.info("cannot keep the resume history on the temporary file: %s", exc)


def sealing(fd: int) -> bytes | None:
    """The sealing state of an encrypted temp file; None when it has none (not recorded, or
    a filesystem without user extended attributes)."""
    try:
        return os.getxattr(fd, SEALING_XATTR)
    except OSError:
        return None


def set_sealing(fd: int, state: bytes, *, durable: bool = False) -> bool:
    """Record the sealing state (fsynced when `durable`); False when it cannot be."""
    try:
        os.setxattr(fd, SEALING_XATTR, state)
        if durable:
            os.fsync(fd)
    except OSError:
        return False
    return True


def forget_sealing(fd: int) -> bool:
    """Remove the sealing state (the temp file is then not resumable): True when it is gone."""
    try:
        os.removexattr(fd, SEALING_XATTR)
    except OSError as exc:
        return exc.errno in (errno.ENODATA, errno.ENOTSUP)  # not there, or never was
    return True


def clear(fd: int) -> None:
    """Drop both attributes (the finished archive carries none); best effort."""
    for name in (EPOCHS_XATTR, SEALING_XATTR):
        try:
            os.removexattr(fd, name)
        except OSError:
            pass
