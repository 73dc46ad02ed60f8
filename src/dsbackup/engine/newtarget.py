"""A failed restore into a store it created leaves the target as it was.

``restore A flatfs:NEW`` of an archive holding keys flatfs cannot take (``/pins/...``) failed
at the first such key and left ``NEW`` behind, an empty flatfs (``SHARDING``, ``_README``): a
retry into it then met an existing store, and a user looking at the disk saw a restore that
seemed to have done something. A target that was missing (or an empty directory) before the
restore is made missing (or empty) again when the restore fails having left no records in it
(no restore journal: docs/CLI.md, a restore that failed before it wrote anything). A restore
that did write records keeps them and its journal, to be finished by a rerun.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SQLITE_SIDES = ("-wal", "-shm", "-journal")


class NewTarget:
    """What a restore may create for `target` (a URI), noted before it runs."""

    def __init__(self, target: Any) -> None:
        self.path: Path | None = None
        self.was_empty_dir = False
        self.top: Path | None = None  # the highest directory above it that was missing
        self.sides: list[Path] = []  # a SQLite file's side files that were missing
        if not isinstance(target, (str, os.PathLike)):
            return
        from dsbackup.datastores.registry import parse_uri

        scheme, loc, _ = parse_uri(os.fspath(target))
        if scheme in (None, "memory") or not loc:
            return  # (a bare path names an existing store)
        p = Path(loc).absolute()
        if os.path.lexists(p):
            try:
                if p.is_dir() and not p.is_symlink() and not os.listdir(p):
                    self.path, self.was_empty_dir = p, True
            except OSError:
                pass
            return
        self.path = p
        if scheme == "sqlite":
            self.sides = [p.with_name(p.name + s) for s in _SQLITE_SIDES
                          if not os.path.lexists(p.with_name(p.name + s))]
        up = p.parent
        while up != up.parent and not os.path.lexists(up):
            self.top, up = up, up.parent

    def recheck(self) -> None:
        """Called once the restore holds the target's lock: a store another writer made in
        the meantime (a restore that finished, an ``ipfs init``) is not this restore's to
        remove, nor are files put in the empty directory."""
        p = self.path
        if p is None:
            return
        try:
            if self.was_empty_dir:
                same = p.is_dir() and not p.is_symlink() and not os.listdir(p)
            else:
                same = not os.path.lexists(p) and not any(os.path.lexists(s) for s in self.sides)
        except OSError:
            same = False
        if not same:
            self.path, self.sides = None, []

    def remove_store(self) -> bool:
        """Remove what the failed restore made of the store (call while holding its lock).
        True when something was removed."""
        p = self.path
        if p is None or not os.path.lexists(p):
            return False
        try:
            if self.was_empty_dir:
                for name in os.listdir(p):
                    _remove(p / name)
            else:
                _remove(p)
                for side in self.sides:
                    if os.path.lexists(side):
                        side.unlink()
        except OSError as exc:
            log.warning("%s: cannot remove what the failed restore created there: %s", p, exc)
            return False
        log.info("%s: removed what the failed restore created there", p)
        return True

    def remove_parents(self) -> None:
        """Remove the directories made above the store, if they are empty (after its lock
        was released: the lock file lies beside the store)."""
        if self.path is None or self.top is None:
            return
        d = self.path.parent
        while True:
            try:
                d.rmdir()
            except OSError:
                return
            if d == self.top:
                return
            d = d.parent


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        import shutil  # (not on the restore's start-up path)

        shutil.rmtree(p)
    else:
        p.unlink()
