"""The process's registry of open LMDB environments (datastores/lmdb.py's rule: one open per
environment and process), without py-lmdb.

The py-lmdb backend (``dsbackup.datastores.lmdb``) registers its environments in
``open_envs``; code with its own liblmdb (the native restore writer, scanner and migration
copy) holds a :func:`claim` while it has one open. Apart from the backend so that a native
restore into LMDB does not import py-lmdb and the backend at start-up (docs/PERFORMANCE.md,
"Restore and deep verify at quarter scale, fresh profile")."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from dsbackup.errors import DatastoreError

registry_lock = threading.Lock()
open_envs: dict[str, weakref.ref[Any]] = {}  # env id -> the backend's datastore
claims: dict[str, str] = {}  # env id -> owner, for environments opened by other code


def env_id(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def is_open(path: str | os.PathLike[str]) -> bool:
    """True when this process holds the LMDB environment at ``path`` open, through the py-lmdb
    backend or through a :func:`claim` (e.g. the native scanner's liblmdb)."""
    eid = env_id(path)
    with registry_lock:
        ref = open_envs.get(eid)
        return eid in claims or (ref is not None and ref() is not None)


@contextlib.contextmanager
def claim(path: str | os.PathLike[str], owner: str) -> Iterator[None]:
    """Mark ``path`` as open in this process by ``owner`` (code with its own liblmdb) for
    the duration of the block; opening it here meanwhile raises :class:`DatastoreError`,
    and claiming a path that is already open raises too."""
    eid = env_id(path)
    with registry_lock:
        ref = open_envs.get(eid)
        if eid in claims or (ref is not None and ref() is not None):
            holder = claims.get(eid, "dsbackup.datastores.lmdb")
            raise DatastoreError(f"LMDB environment {path} is already open in this process "
                                 f"(by {holder}); LMDB environments may be opened once per "
                                 "process")
        claims[eid] = owner
    try:
        yield
    finally:
        with registry_lock:
            claims.pop(eid, None)


def _after_fork_in_child() -> None:
    # the parent's claims are not this process's (the backend clears its own environments
    # after closing their copies: datastores/lmdb.py)
    with registry_lock:
        claims.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
