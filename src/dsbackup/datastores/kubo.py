"""Kubo (go-ipfs) repositories opened as one datastore.

``kubo:PATH`` reads ``PATH/datastore_spec`` and mounts what it names, by default
``/blocks`` (flatfs) and ``/`` (LevelDB, ``levelds``). A repo in use by a running daemon is
refused with :class:`~dsbackup.errors.LockedError` (exit code 4): Kubo holds an fcntl
(POSIX) write lock on ``repo.lock``, which ``flock`` cannot see, so the probe uses
``fcntl.lockf``. While the datastore is open we hold a shared lock on ``repo.lock`` so a
daemon cannot start underneath us. ``allow_live=True`` skips the refusal (LevelDB's own
lock will still refuse a second opener).

A ``levelds`` mount writes its tables as Kubo would: with the ``compression`` that
``config``'s ``Datastore.Spec`` gives that mount (``datastore_spec`` does not record it):
``"none"`` (Kubo's default config) uncompressed, ``"snappy"`` or ``""`` snappy (goleveldb's
default); without a ``config`` (a restore writes it with the node's files) Kubo's default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dsbackup.datastores.base import BaseDatastore
from dsbackup.datastores.kubolock import LOCK_FILE, SPEC_FILE, probe_repo_lock
from dsbackup.datastores.mount import MountDatastore
from dsbackup.datastores.sharedlock import SharedLock
from dsbackup.errors import DatastoreError

__all__ = ["KuboDatastore", "mount_dirs", "open_kubo", "probe_repo_lock", "LOCK_FILE", "SPEC_FILE"]

CONFIG_FILE = "config"
_WRAPPERS = ("measure", "log")


class KuboDatastore(MountDatastore):
    """The mounts of a Kubo repo; ``mounts`` and ``spec`` say what was opened."""

    scheme = "kubo"

    def __init__(self, repo: str | os.PathLike[str], *, readonly: bool = False,
                 allow_live: bool = False) -> None:
        self.repo = Path(repo).absolute()
        spec_path = self.repo / SPEC_FILE
        try:
            self.spec: dict[str, Any] = json.loads(spec_path.read_text())
        except FileNotFoundError:
            raise DatastoreError(f"{self.repo}: not a Kubo repo ({SPEC_FILE} missing)") \
                from None
        except ValueError as e:
            raise DatastoreError(f"{spec_path}: invalid JSON: {e}") from e
        self._lock: SharedLock | None = None
        if not allow_live:
            self._lock = probe_repo_lock(self.repo)
        opened: list[tuple[str, BaseDatastore]] = []
        try:
            for mountpoint, child in self._mount_specs(self.spec):
                opened.append((mountpoint, self._open_child(child, readonly)))
        except BaseException:
            for _, ds in opened:
                ds.close()
            self._release_lock()
            raise
        uri = f"kubo:{self.repo}" + ("?allow_live=1" if allow_live else "")
        super().__init__(opened, uri=uri, readonly=readonly, location=str(self.repo))

    @staticmethod
    def _unwrap(spec: dict[str, Any]) -> dict[str, Any]:
        while (isinstance(spec, dict) and spec.get("type") in _WRAPPERS
               and isinstance(spec.get("child"), dict)):
            spec = spec["child"]
        return spec

    def _bad_spec(self, what: str) -> DatastoreError:
        return DatastoreError(f"{self.repo}/{SPEC_FILE}: {what}; not a datastore_spec Kubo "
                              "writes (it mirrors config's Datastore.Spec)")

    def _mount_specs(self, spec: Any) -> list[tuple[str, dict[str, Any]]]:
        spec = self._unwrap(spec)
        if not isinstance(spec, dict):
            raise self._bad_spec(f"a JSON {type(spec).__name__}, not an object")
        if spec.get("type") == "mount":
            mounts = spec.get("mounts", [])
            if not isinstance(mounts, list):
                raise self._bad_spec("'mounts' is not a list")
            out = []
            for m in mounts:
                if not isinstance(m, dict):
                    raise self._bad_spec(f"a mount is {m!r}, not an object")
                child = self._unwrap(m.get("child", m))
                if not isinstance(child, dict):
                    raise self._bad_spec(f"a mount's child is {child!r}, not an object")
                mp = m.get("mountpoint") or child.get("mountpoint")
                if not mp:
                    raise DatastoreError(f"{self.repo}/{SPEC_FILE}: mount without mountpoint")
                if not isinstance(mp, str):
                    raise self._bad_spec(f"mountpoint {mp!r} is not a string")
                out.append((mp, child))
            return out
        return [("/", spec)]

    def _open_child(self, spec: dict[str, Any], readonly: bool) -> BaseDatastore:
        kind = spec.get("type")
        rel = spec.get("path")
        if not rel and kind in ("flatfs", "levelds"):
            raise DatastoreError(f"{self.repo}/{SPEC_FILE}: {kind} mount without a path")
        if rel is not None and not isinstance(rel, str):
            raise self._bad_spec(f"the {kind} mount's path {rel!r} is not a string")
        shard = spec.get("shardFunc")
        if kind == "flatfs" and shard is not None and not isinstance(shard, str):
            raise self._bad_spec(f"shardFunc {shard!r} is not a string")
        path = self.repo / rel if rel else self.repo
        if kind == "flatfs":
            from dsbackup.datastores.flatfs import FlatfsDatastore

            return FlatfsDatastore(path, readonly=readonly, shard=shard,
                                   sync=bool(spec.get("sync", True)))
        if kind == "levelds":
            from dsbackup.datastores.leveldb import LevelDbDatastore

            return LevelDbDatastore(path, readonly=readonly,
                                    compression=self._levelds_compression(rel))
        raise DatastoreError(f"{self.repo}/{SPEC_FILE}: datastore type {kind!r} is not "
                             "supported (supported: mount, flatfs, levelds)")

    def _levelds_compression(self, rel: str) -> str | None:
        """The compression Kubo's levelds plugin (plugin/plugins/levelds) writes the mount
        at ``rel`` with: config's ``"none"`` -> None, ``"snappy"`` or ``""`` -> snappy."""
        try:
            config = json.loads((self.repo / CONFIG_FILE).read_text())
            spec = config["Datastore"]["Spec"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # Kubo's default config: "compression": "none"
        stack: list[Any] = [spec]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
            elif isinstance(node, dict):
                if node.get("type") == "levelds" and node.get("path") == rel:
                    return None if node.get("compression") == "none" else "snappy"
                stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        return None

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()  # the last share closes the file, which drops the lock
            self._lock = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_lock()


def mount_dirs(repo: str | os.PathLike[str], spec_repo: str | os.PathLike[str] | None = None
               ) -> list[Path]:
    """The directories ``datastore_spec`` mounts (``blocks``, ``datastore``, ...; one may be
    a symlink to another disk), without opening them; [] when there is no readable spec.
    ``spec_repo``: read the spec there instead (a new repo that will get that spec)."""
    root = Path(repo).absolute()
    try:
        spec = KuboDatastore._unwrap(json.loads(
            (Path(spec_repo or root).absolute() / SPEC_FILE).read_text()))
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(spec, dict):
        return []
    mounts = spec.get("mounts", []) if spec.get("type") == "mount" else [spec]
    out = []
    for m in mounts if isinstance(mounts, list) else []:
        child = KuboDatastore._unwrap(m.get("child", m)) if isinstance(m, dict) else {}
        rel = child.get("path") if isinstance(child, dict) else None
        if isinstance(rel, str) and rel:
            out.append(root / rel)
    return out


def open_kubo(path: str, *, readonly: bool = False, allow_live: bool | str = False
              ) -> KuboDatastore:
    from dsbackup.datastores.registry import _bool_param

    return KuboDatastore(path, readonly=readonly, allow_live=_bool_param(allow_live, "allow_live"))
