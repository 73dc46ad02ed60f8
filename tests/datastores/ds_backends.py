"""Backend factories shared by the datastore tests (imported by conftest and tests)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dsbackup.datastores.base import BaseDatastore
from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.datastores.fsds import FsDatastore
from dsbackup.datastores.helia import HeliaDatastore
from dsbackup.datastores.leveldb import LevelDbDatastore
from dsbackup.datastores.lmdb import LmdbDatastore
from dsbackup.datastores.memory import MemoryDatastore
from dsbackup.datastores.mount import MountDatastore
from dsbackup.datastores.sqlite import SqliteDatastore

BACKENDS = ["memory", "lmdb", "flatfs", "leveldb", "sqlite", "mount", "fsds", "helia"]


def _identity(s: str) -> str:
    return s


def _flat(s: str) -> str:
    """Map a go-datastore test key into the flatfs key space (flat, upper case):
    ``/prefix/sub/0key0`` becomes ``/PREFIX_SUB_0KEY0``. Prefix queries then match nothing
    but the root, which the naive reference computes the same way."""
    if s in ("", "/"):
        return s
    lead = "/" if s.startswith("/") else ""
    body = re.sub(r"[^0-9A-Z+\-_=]", "_", s[len(lead):].upper().replace("/", "_"))
    return lead + body


@dataclass
class Store:
    kind: str
    ds: BaseDatastore
    key: Callable[[str], str]  # test key -> key valid in this backend


def make_store(kind: str, tmp: Path) -> Store:
    if kind == "memory":
        return Store(kind, MemoryDatastore(), _identity)
    if kind == "lmdb":
        return Store(kind, LmdbDatastore(tmp / "lmdb", sync=False), _identity)
    if kind == "flatfs":
        return Store(kind, FlatfsDatastore(tmp / "flatfs", sync=False), _flat)
    if kind == "leveldb":
        return Store(kind, LevelDbDatastore(tmp / "leveldb"), _identity)
    if kind == "sqlite":
        return Store(kind, SqliteDatastore(tmp / "db.sqlite", sync=False), _identity)
    if kind == "mount":
        # Three real children, nested: /prefix/sub is deeper than /prefix, which is deeper
        # than /. The go-datastore test keys spread over all three.
        return Store(kind, MountDatastore([
            ("/", MemoryDatastore()),
            ("/prefix", LmdbDatastore(tmp / "mount-lmdb", sync=False)),
            ("/prefix/sub", SqliteDatastore(tmp / "mount.sqlite", sync=False)),
        ]), _identity)
    if kind == "fsds":
        return Store(kind, FsDatastore(tmp / "fsds", sync=False), _identity)
    if kind == "helia":  # the test keys land in its datastore-fs (none is under /blocks)
        return Store(kind, HeliaDatastore(tmp / "helia", sync=False), _identity)
    raise ValueError(kind)
