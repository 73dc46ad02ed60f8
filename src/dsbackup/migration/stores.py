"""The stores of one migration run: opened once each, looked up by name or URI, lent to
native code, and swapped for a restored copy (rollback). Also the helpers that compare store
URIs and paths."""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from dsbackup.datastores import open_datastore, parse_uri
from dsbackup.errors import DatastoreError
from dsbackup.migration.dryrun import open_readonly
from dsbackup.migration.plan import SOURCE, TARGET, MigrationStep, MigrationType
from dsbackup.storage.tempfiles import fsync_dir

__all__ = ["STAGEABLE", "LentStores", "RunStores", "StoreLike", "refs_written", "remove_path",
           "same_uri", "store_path"]

log = logging.getLogger(__name__)

StoreLike = Any  # a datastore URI (str / PathLike) or an opened Datastore object


def store_path(ds: Any) -> Path | None:
    """The filesystem path behind a store (URI, path or opened store), or ``None``."""
    uri = os.fspath(ds) if isinstance(ds, (str, os.PathLike)) else getattr(ds, "uri", None)
    if not isinstance(uri, str):
        return None
    scheme, path, _ = parse_uri(uri)
    if scheme == "memory" or not path:
        return None
    return Path(path).resolve()


def same_uri(a: str, b: str) -> bool:
    sa, pa, _ = parse_uri(a)
    sb, pb, _ = parse_uri(b)
    if sa == "memory" or sb == "memory":
        return False  # every memory: URI opens a new store
    return os.path.realpath(pa) == os.path.realpath(pb)


def _write_options(uri: str) -> dict[str, Any]:
    """LMDB stores are written without an fsync per transaction: every journal checkpoint
    syncs the store first (``sync()`` forces LMDB's flush), so nothing the journal claims is
    lost, and a kill loses nothing the OS already has. A URI that sets ``sync`` keeps it."""
    scheme, _path, params = parse_uri(uri)
    if scheme == "lmdb" and "sync" not in params:
        return {"sync": False}
    return {}


def remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def refs_written(plan_steps: list[MigrationStep]) -> set[str]:
    """The store references (``source``, ``target`` or a URI) that these steps may write."""
    refs: set[str] = set()
    for step in plan_steps:
        if step.kind is MigrationType.VALIDATE:
            continue
        refs.add(step.target)
        if step.kind is MigrationType.MOVE:
            refs.add(step.source)
    return refs


# stores the pre-migration archive can be restored into beside the source, then swapped in
STAGEABLE = {"lmdb", "sqlite", "flatfs", "leveldb"}


class RunStores:
    """The stores of one run: ``source``, ``target`` and any URI a step names, each opened
    once (an LMDB environment must never be opened twice in one process)."""

    def __init__(self, readonly: bool) -> None:
        self.readonly = readonly
        self.by_name: dict[str, Any] = {}
        self._owned: list[Any] = []
        self._by_uri: dict[str, Any] = {}
        self._uri_of: dict[int, str] = {}

    def _open(self, uri: str, *, must_exist: bool, readonly: bool = False) -> Any:
        for known, ds in self._by_uri.items():
            if same_uri(known, uri):
                return ds
        scheme, path, _ = parse_uri(uri)
        if must_exist and scheme != "memory" and path and not os.path.exists(path):
            # opening for writing would create an empty store and "migrate" nothing
            raise DatastoreError(f"datastore {uri} does not exist")
        try:
            ds = (open_readonly(uri) if self.readonly or readonly
                  else open_datastore(uri, **_write_options(uri)))
        except DatastoreError:
            if must_exist or not self.readonly:
                raise
            # dry run on a target that does not exist yet: it reads as empty
            ds = open_datastore("memory:", readonly=True)
            ds.uri = uri
        self._owned.append(ds)
        self._by_uri[uri] = ds
        self._uri_of[id(ds)] = uri
        return ds

    def add(self, name: str, store: StoreLike, *, must_exist: bool, readonly: bool = False
            ) -> Any:
        """``readonly``: a store nothing writes (a copy's source): opened so that not a
        byte of it changes (no flatfs ``.temp``, LevelDB through a snapshot)."""
        if isinstance(store, (str, os.PathLike)):
            ds = self._open(os.fspath(store), must_exist=must_exist, readonly=readonly)
        else:
            ds = store
            uri = getattr(ds, "uri", None)
            if isinstance(uri, str):
                self._by_uri.setdefault(uri, ds)
        self.by_name[name] = ds
        return ds

    def is_written(self, name: str, refs: set[str]) -> bool:
        """True when one of ``refs`` names the store registered as ``name`` (the same
        object, or a URI of the same path)."""
        ds = self.by_name[name]
        path = store_path(ds)
        for ref in refs:
            if ref in (SOURCE, TARGET):
                if self.by_name.get(ref) is ds:
                    return True
            elif path is not None and store_path(ref) == path:
                return True
        return False

    def resolve(self, ref: str) -> Any:
        if ref in (SOURCE, TARGET):
            return self.by_name[ref]
        return self._open(ref, must_exist=True)

    def exclusive(self, *stores: Any) -> LentStores:
        """Lend owned LMDB stores to code with its own liblmdb: they are closed now, claimed
        in the one-environment-per-process registry, and reopened (same URI) on exit.
        Raises ``ValueError`` when a store was not opened by this run or is not LMDB."""
        for ds in stores:
            if ds not in self._owned or getattr(ds, "scheme", "") != "lmdb":
                raise ValueError("only LMDB stores this run opened can be lent")
        return LentStores(self, list(stores))

    def owns(self, ds: Any) -> bool:
        return ds in self._owned

    def uri_of(self, ds: Any) -> str:
        """The URI an owned store was opened with."""
        return self._uri_of[id(ds)]

    def swap_in(self, ds: Any, staged: Path) -> Any:
        """Replace the owned store ``ds`` by the store restored at ``staged`` (same kind):
        ``ds`` is closed, its path renamed aside, ``staged`` renamed into place, the old one
        removed, and the store reopened under its URI (returned)."""
        uri = self._uri_of[id(ds)]
        path = store_path(ds)
        assert path is not None
        ds.close()
        old = path.with_name(f".{path.name}.dsmigrate-old-{os.getpid()}")
        moved: list[tuple[Path, Path]] = []
        try:
            for suffix in ("", "-wal", "-shm"):  # SQLite's side files go with their file
                a = path.with_name(path.name + suffix)
                if a.exists():
                    b = old.with_name(old.name + suffix)
                    os.rename(a, b)
                    moved.append((b, a))
            os.rename(staged, path)
        except BaseException:
            for b, a in reversed(moved):  # put the store back exactly where it was
                os.rename(b, a)
            self._reopen_as(ds, uri)
            raise
        fsync_dir(path.parent)
        new = self._reopen_as(ds, uri)
        for b, _a in moved:
            remove_path(b)
        return new

    def _reopen_as(self, old: Any, uri: str) -> Any:
        new = open_datastore(uri, **_write_options(uri))
        self._uri_of[id(new)] = uri
        self._replace(old, new)
        return new

    def _replace(self, old: Any, new: Any) -> None:
        self._owned[self._owned.index(old)] = new
        for table in (self.by_name, self._by_uri):
            for k, v in list(table.items()):
                if v is old:
                    table[k] = new

    def close(self) -> None:
        for ds in reversed(self._owned):
            try:
                ds.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                log.exception("closing %s failed", getattr(ds, "uri", ds))
        self._owned.clear()


class LentStores:
    """Context manager of :meth:`RunStores.exclusive`; ``stores`` holds the reopened objects."""

    def __init__(self, owner: RunStores, stores: list[Any]) -> None:
        self.owner = owner
        self.stores = stores
        self._uris = [owner._uri_of[id(ds)] for ds in stores]
        self._claims = ExitStack()

    def __enter__(self) -> LentStores:
        from dsbackup.datastores import lmdb as lmdb_backend

        for ds in self.stores:
            ds.close()
        try:
            for ds in self.stores:
                self._claims.enter_context(lmdb_backend.claim(ds.path, "dsbackup.migration"))
        except BaseException:
            self._claims.close()
            self._reopen()
            raise
        return self

    def _reopen(self) -> None:
        fresh = []
        for old, uri in zip(self.stores, self._uris):
            new = open_datastore(uri, **_write_options(uri))
            self.owner._uri_of[id(new)] = uri
            self.owner._replace(old, new)
            fresh.append(new)
        self.stores = fresh

    def __exit__(self, *exc: object) -> None:
        self._claims.close()
        self._reopen()
