"""A restore's (or migration's) directory target must be new, empty, or a store of its
scheme's kind.

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
    if "lost+found" in names and os.path.isdir(os.path.join(loc, "lost+found")):
        names.remove("lost+found")  # a new filesystem's mount point is an empty directory
    if not names or kind[1].intersection(names):
        return
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    raise DatastoreError(f"{loc}: directory holds other files ({shown}) and no {kind[0]} store; "
                         f"{doing} into a new or empty directory, or into an existing store")
