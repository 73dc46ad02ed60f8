"""A full disk as a clear error: which filesystem, how much was needed, how much is free."""

from __future__ import annotations

import errno
import os
from pathlib import Path

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(exc: BaseException) -> bool:
    """True for an OSError that means the filesystem (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def mount_point(path: str | os.PathLike[str]) -> str:
    """The mount point of the filesystem holding `path` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    try:
        st = os.statvfs(mount_point(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# the end of a message about a full temporary directory
TMPDIR_HINT = "free space there, or run with TMPDIR=/a/larger/disk"


def no_space_message(path: str | os.PathLike[str], needed: int | None = None,
                     free: int | None = None, *, what: str = "") -> str:
    """`PATH: no space left on MOUNT (needed N, free M)`, plus what a rerun does."""
    free = free_bytes(path) if free is None else free
    size = _size
    if needed is not None and free is not None and _size(needed) == _size(free):
        size = lambda n: f"{n} bytes"  # noqa: E731 - close: exact numbers tell them apart
    parts = []
    if needed is not None:
        parts.append(f"needed {size(needed)}")
    if free is not None:
        parts.append(f"free {size(free)}")
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"{path}: no space left on {mount_point(path)}{detail}" + (f"; {what}" if what
                                                                       else "")
