"""A restore's (or migration's) directory target must be new, empty, or a store of its
scheme's kind (lmdb:, leveldb:, fsds:).

``restore A lmdb:~`` (a typo, a wrong variable) put ``data.mdb`` and ``lock.mdb`` among the
files of a home directory and said OK; LevelDB's files likewise. A directory that holds files
and none of the store's own is refused before anything is written there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dsbackup.errors import DatastoreError

# the names an existing store of each kind holds (one is enough: a store cut short)
_MARKERS = {"lmdb": ("LMDB", {"data.mdb", "lock.mdb"}),
            "leveldb": ("LevelDB", {"CURRENT", "LOCK", "LOG"})}


def refuse_foreign_directory(target: Any, own: str | os.PathLike[str] | None = None, *,
                             doing: str = "restore") -> None:
    """DatastoreError when `target` (a URI) names an existing directory holding files but none
    of its store's own; nothing to check for other targets (objects, other schemes, a path
    that is missing or not a directory: the store's opener decides). `own`: a path of the
    caller's that may lie in the directory (a migration's --state-dir), not counted."""
    if not isinstance(target, (str, os.PathLike)):
        return
    from dsbackup.datastores.registry import parse_uri

    scheme, loc, _ = parse_uri(os.fspath(target))
    if loc and scheme not in (None, "sqlite", "memory") and os.path.islink(loc) \
            and not os.path.exists(loc):  # (mkdir said only "File exists")
        raise DatastoreError(f"{loc}: a symlink to {os.readlink(loc)}, which does not exist; "
                             f"create that directory, or {doing} into another path")
    if scheme == "fsds" and loc:
        _refuse_foreign_fsds(loc, own, doing)
        return
    kind = _MARKERS.get(scheme or "")
    if kind is None or not loc:
        return
    try:
        names = os.listdir(loc)
    except OSError:
        return
    if own is not None:
        mine, root = Path(os.path.abspath(own)), Path(os.path.abspath(loc))
        if mine != root and mine.is_relative_to(root):
            names = [n for n in names if n != mine.relative_to(root).parts[0]]
    names = [n for n in names if not _bookkeeping(n)]
    if "lost+found" in names and os.path.isdir(os.path.join(loc, "lost+found")):
        names.remove("lost+found")  # a new filesystem's mount point is an empty directory
    if not names or kind[1].intersection(names):
        return
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    raise DatastoreError(f"{loc}: directory holds other files ({shown}) and no {kind[0]} store; "
                         f"{doing} into a new or empty directory, or into an existing store")


_WALK_LIMIT = 10_000  # entries looked at for a record file before a directory counts as foreign


def _refuse_foreign_fsds(loc: str, own: str | os.PathLike[str] | None, doing: str) -> None:
    """An ``fsds:`` directory (records are ``*.data`` files, namespaces directories) whose top
    level holds other files (``notes.txt``, a home directory's dot files) and no record file
    within its first entries (a store with a stray file still has records) is refused."""
    try:
        top = list(os.scandir(loc))
    except OSError:
        return
    mine = None
    if own is not None:
        path, root = Path(os.path.abspath(own)), Path(os.path.abspath(loc))
        if path != root and path.is_relative_to(root):
            mine = path.relative_to(root).parts[0]
    other = sorted(e.name for e in top if e.name != mine and not _fsds_own(e))
    if not other:
        return
    seen = 0
    for _, dirs, files in os.walk(loc):
        if any(f.endswith(".data") for f in files):
            return  # a store (with a stray file): its own business
        seen += len(dirs) + len(files)
        if seen > _WALK_LIMIT:
            break
    shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
    raise DatastoreError(f"{loc}: directory holds other files ({shown}) and no fsds record "
                         f"(*.data); {doing} into a new or empty directory, or into an "
                         "existing store")


def _fsds_own(entry: os.DirEntry[str]) -> bool:
    """A record, a namespace (any directory: a new filesystem's ``lost+found`` too) or a
    writer's temp file (``.NAME.data.tmp[-XXXXXXXX]``)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return True
    except OSError:
        return False
    n = entry.name
    return n.endswith(".data") or (n.startswith(".") and ".data.tmp" in n) or _bookkeeping(n)


def _bookkeeping(name: str) -> bool:
    """dsbackup's own files beside a store inside the directory (its writer's lock file,
    a restore's journal and its temp files): not someone else's files."""
    return name.endswith(".dsbackup.lock") or ".dsbackup-restore.json" in name
