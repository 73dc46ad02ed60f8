"""A full snapshot of a directory tree (or one file), to assert that an operation left a
source store exactly as it was: every path with its type, mode, size, mtime (ns) and, for
files, a SHA-256 of the content; directories and symlinks included (a symlink is not
followed). Usable by any backend's tests:

    before = snapshot(store_dir)
    ...backup or migrate...
    assert_unchanged(before, snapshot(store_dir))
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Entry = tuple[str, int, int, int, str]  # kind, mode, size, mtime_ns, sha256 (files)


def _entry(p: Path) -> Entry:
    st = p.lstat()
    if stat.S_ISDIR(st.st_mode):
        return ("dir", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, "")
    if stat.S_ISLNK(st.st_mode):
        return ("link", 0, st.st_size, st.st_mtime_ns, os.readlink(p))
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, h.hexdigest())


def snapshot(root: str | os.PathLike[str]) -> dict[str, Entry]:
    """Path (relative, ``"."`` for the root) -> entry, for ``root`` and everything below."""
    base = Path(root)
    out = {".": _entry(base)}
    if base.is_dir() and not base.is_symlink():
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                out[p.relative_to(base).as_posix()] = _entry(p)
    return out


def assert_unchanged(before: dict[str, Entry], after: dict[str, Entry]) -> None:
    """Fail naming what was added, removed or changed."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), (
        f"source changed: added {added[:10]}, removed {removed[:10]}, changed "
        f"{[(k, before[k], after[k]) for k in changed[:5]]}")
