"""Path guard: an archive never lands inside a store it reads or writes, and a restore target
never contains the archive it is restored from.

Shared by backup, restore, migrate and consolidate. Paths are compared after resolving symlinks
(``realpath``), both where the archive's name lands (its resolved directory: the temporary file
goes there too) and what the name points to when it is a symlink. A store occupies:

- ``lmdb:``, ``flatfs:``, ``leveldb:``, ``kubo:``: its directory (``data.mdb``, shards, ``CURRENT``
  ... all lie inside it; an ``lmdb:`` path naming ``data.mdb`` means its directory);
- ``sqlite:``: its file and the ``-wal``, ``-shm`` and ``-journal`` files beside it;
- ``memory:`` and datastore objects without a path: nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dsbackup.errors import PathConflictError
from dsbackup.storage import identity, is_remote

SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _real(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def store_paths(store: Any) -> list[tuple[Path, bool]]:
    """``(path, is_directory)`` for what the datastore `store` (a URI, a path or an open
    datastore) occupies on disk, symlinks resolved."""
    if isinstance(store, (str, os.PathLike)):
        from dsbackup.datastores.registry import parse_uri

        scheme, loc, _ = parse_uri(os.fspath(store))
        return _paths_at(scheme, loc)
    out: list[tuple[Path, bool]] = []
    for m in getattr(store, "mounts", None) or []:  # mount and kubo: the children too
        out += store_paths(getattr(m, "datastore", None))
    scheme, loc = getattr(store, "scheme", None), getattr(store, "location", None)
    if isinstance(scheme, str) and isinstance(loc, str) and loc:
        out += _paths_at(scheme or None, loc)
    else:  # a store that does not say where it lives (a user's backend): its URI
        uri = getattr(store, "uri", None)
        if isinstance(uri, str) and uri:
            out += store_paths(uri)
    return out


def _paths_at(scheme: str | None, loc: str) -> list[tuple[Path, bool]]:
    """What a store of `scheme` (None: unknown, judged from the path) at `loc` occupies."""
    if scheme == "memory" or not loc:
        return []
    if scheme is None:  # a bare path: whatever it is (a file is an SQLite store)
        p = _real(loc)
        if p.is_file() and p.name != "data.mdb":
            return [(p.with_name(p.name + s), False) for s in SQLITE_SIDE_FILES]
        return [(p.parent if p.name == "data.mdb" and p.is_file() else p, True)]
    if scheme == "sqlite":
        p = _real(loc)
        return [(p.with_name(p.name + s), False) for s in SQLITE_SIDE_FILES]
    p = _real(loc)
    if scheme == "lmdb" and p.name == "data.mdb" and not p.is_dir():
        p = p.parent
    return [(p, True)]


def _archive_forms(archive: str | os.PathLike[str]) -> set[Path]:
    a = Path(os.path.expanduser(os.fspath(archive))).absolute()
    return {_real(a.parent) / a.name, _real(a)}


def _overlap(archive_path: Path, store_path: Path, is_dir: bool) -> bool:
    if is_dir:
        return archive_path == store_path or store_path in archive_path.parents
    return archive_path == store_path


def _conflict(archive: Any, stores: Iterable[tuple[str, Any]]) -> tuple[str, Any, Path] | None:
    if is_remote(archive):  # an object or a stream lies in no local store
        return None
    forms = _archive_forms(archive)
    for role, store in stores:
        for sp, is_dir in store_paths(store):
            if any(_overlap(a, sp, is_dir) for a in forms):
                return role, store, sp
    return None


def _name(store: Any) -> str:
    return os.fspath(store) if isinstance(store, (str, os.PathLike)) else str(
        getattr(store, "uri", None) or type(store).__name__)


def check_archive_outside(archive: str | os.PathLike[str], stores: Iterable[tuple[str, Any]],
                          ) -> None:
    """Raise PathConflictError when `archive` (or its temporary file beside it) would lie
    inside, or be, the file or directory of one of `stores`: ``(role, store)`` pairs such as
    ``("source", "lmdb:/x")``."""
    hit = _conflict(archive, stores)
    if hit is not None:
        role, store, sp = hit
        raise PathConflictError(
            f"archive {os.fspath(archive)} would be written inside the {role} store "
            f"{_name(store)} ({sp}); that would destroy the store: write the archive outside it")


def check_target_outside(target: Any, archives: Iterable[str | os.PathLike[str]]) -> None:
    """Raise PathConflictError when the restore (or migration) `target` contains, or is, one
    of `archives` (the archive being read and its parent chain)."""
    for a in archives:
        if _conflict(a, [("target", target)]) is not None:
            raise PathConflictError(
                f"restore target {_name(target)} contains the archive {os.fspath(a)} it "
                "would be restored from; restore into a store outside the archive's location "
                "(or move the archive)")


def check_new_archive(out: str | os.PathLike[str], *, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike[str]] = (),
                      parent_dirs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Before an archive is written to `out`:

    - `out` may not be one of `inputs` (the archives it is made from: a parent chain,
      consolidate's input and its chain), not even with `overwrite` (PathConflictError);
    - a file already at `out` is ArchiveExistsError unless `overwrite`;
    - with `overwrite`, an archive that another archive in `out`'s directory or in
      `parent_dirs` names as its parent is still refused (ArchiveExistsError naming them).
    """
    from dsbackup.errors import ArchiveExistsError

    if is_remote(out):
        _check_new_remote(out, overwrite=overwrite, inputs=inputs, parent_dirs=parent_dirs)
        return
    target = Path(os.path.expanduser(os.fspath(out)))
    forms = _archive_forms(target)
    for a in inputs:
        if _archive_forms(a) & forms:
            raise PathConflictError(
                f"{target}: is {os.fspath(a)}, an archive this one is made from; write the "
                "new archive to another path")
    if not os.path.lexists(target):
        return
    if target.is_dir():
        return  # the writer reports "is a directory"
    if not overwrite:
        raise ArchiveExistsError(f"{target}: already exists; not replacing it (give "
                                 "--overwrite to replace an archive no other archive depends "
                                 "on)")
    _refuse_if_depended_on(target, parent_dirs)


def _refuse_if_depended_on(target: Any, parent_dirs: Iterable[Any]) -> None:
    """ArchiveExistsError when an archive beside `target` (its directory or S3 prefix) or in
    `parent_dirs` names it as its parent; LockedError when a running backup holds it
    (dsbackup.storage.holds: it reads it as its parent)."""
    from dsbackup.archive.lineage import dependents, directory_archives, read_lineage
    from dsbackup.errors import ArchiveExistsError
    from dsbackup.storage import as_location

    if isinstance(target, Path):  # a running incremental reads it as its parent
        from dsbackup.errors import LockedError
        from dsbackup.storage.holds import holds_in

        for h in holds_in(target.parent):
            if h.live and h.archive == target.name:
                raise LockedError(
                    f"{target}: not replaced, although --overwrite was given: a backup (PID "
                    f"{h.pid}) is writing {h.child or 'an archive'} with it as its parent; "
                    "wait for it to finish")
    pool = directory_archives(target.parent)
    for d in parent_dirs:
        pool += directory_archives(as_location(d))
    infos, opaque = read_lineage(pool)
    deps = dependents(target, infos)
    if deps:
        shown = ", ".join(str(p) for p in deps[:5]) + (" ..." if len(deps) > 5 else "")
        raise ArchiveExistsError(
            f"{target}: not replaced, although --overwrite was given: {len(deps)} archive(s) "
            f"use it as their parent ({shown}); replacing it would make them unrestorable")
    # an archive whose parent cannot be read (encrypted without its key, a newer format) may
    # use the target, unless it was written before the target was
    maybe = [p for p in opaque if identity(p) != identity(target)
             and not _written_before(p, target)]
    if maybe:
        raise ArchiveExistsError(
            f"{target}: not replaced, although --overwrite was given: {maybe[0]} may use it as "
            "its parent (its parent cannot be read: encrypted without its key, or a newer "
            "format); give its key, or write the new archive to another path")


def _written_before(a: Any, b: Any) -> bool:
    """Whether local file `a` was last written before local file `b` (False when unknown)."""
    if not (isinstance(a, Path) and isinstance(b, Path)):
        return False
    try:
        return os.stat(a).st_mtime_ns < os.stat(b).st_mtime_ns
    except OSError:
        return False


def _check_new_remote(out: Any, *, overwrite: bool, inputs: Iterable[Any],
                      parent_dirs: Iterable[Any]) -> None:
    """check_new_archive for an S3 object or ``-``: not one of `inputs`; with `overwrite`, an
    object that another archive under its prefix or in `parent_dirs` depends on is refused (a
    completed upload replaces the object at once; a failed one leaves it as it was); without,
    an existing object is refused by the sink itself (HEAD before and after the upload)."""
    from dsbackup.storage import S3Location, as_location, exists

    loc = as_location(out)
    for a in inputs:
        if is_remote(a) and identity(as_location(a)) == identity(loc):
            raise PathConflictError(f"{loc}: is {a}, an archive this one is made from; write "
                                    "the new archive to another location")
    if overwrite and isinstance(loc, S3Location) and not loc.is_prefix and exists(loc):
        _refuse_if_depended_on(loc, parent_dirs)
