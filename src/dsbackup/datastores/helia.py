"""``helia:REPO``: a Helia node's repository as its js-stores write it.

``REPO/blocks`` is a ``blockstore-fs`` directory: file ``<shard>/B<base32 multihash>.data``
(``B`` is the multibase prefix of upper-case base32, the shard is the name's last two
characters: blockstore-fs's ``NextToLast`` strategy takes ``name[-2:]``), no ``SHARDING``,
``_README``, ``diskUsage.cache`` or ``.temp/``. It is mounted at ``/blocks`` with the keys
Kubo uses, ``/blocks/<base32 multihash>`` (the ``B`` dropped), so an archive of a Helia repo
restores into a Kubo repo and the other way round.

``REPO/datastore`` is ``datastore-level`` (a LevelDB: ``CURRENT`` present) or
``datastore-fs`` (anything else), mounted at ``/``. A new repo gets a datastore-fs datastore
unless the URI says ``?datastore=level``.

Restoring into ``helia:`` writes only what Helia writes: no metadata files, a hidden temp
file per value renamed into place, modes from the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsbackup.datastores.base import BaseDatastore
from dsbackup.datastores.flatfs_layout import ShardFunc
from dsbackup.datastores.mount import MountDatastore
from dsbackup.errors import ConfigError, DatastoreError

__all__ = ["HeliaDatastore", "open_helia", "BLOCKS_DIR", "DATASTORE_DIR", "NAME_PREFIX",
           "HELIA_SHARD"]

BLOCKS_DIR = "blocks"
DATASTORE_DIR = "datastore"
NAME_PREFIX = b"B"
HELIA_SHARD = ShardFunc("suffix", 2)
_KINDS = ("fs", "level")


def open_blockstore(path: str | os.PathLike[str], *, readonly: bool,
                    sync: bool = True) -> BaseDatastore:
    """A blockstore-fs directory with Kubo's keys (``/<base32 multihash>``)."""
    from dsbackup.datastores.flatfs import FlatfsDatastore

    return FlatfsDatastore(path, readonly=readonly, shard=HELIA_SHARD, sync=sync,
                           name_prefix=NAME_PREFIX, metadata=False)


def datastore_kind(path: Path) -> str:
    """``level`` when ``path`` holds a LevelDB, else ``fs``."""
    return "level" if (path / "CURRENT").is_file() else "fs"


class HeliaDatastore(MountDatastore):
    """``/blocks`` (blockstore-fs) and ``/`` (datastore-fs or datastore-level)."""

    scheme = "helia"

    def __init__(self, repo: str | os.PathLike[str], *, readonly: bool = False,
                 datastore: str | None = None, sync: bool = True,
                 new_datastore: str | None = None) -> None:
        """``datastore``: the kind required; ``new_datastore``: the kind a new repo gets when
        ``datastore`` is not given (a restore passes the archive's source kind)."""
        for name, value in (("datastore", datastore), ("new_datastore", new_datastore)):
            if value is not None and value not in _KINDS:
                raise ConfigError(f"helia: {name}={value!r}: expected 'fs' "
                                  "(datastore-fs) or 'level' (datastore-level)")
        self.repo = Path(repo).absolute()
        blocks, meta = self.repo / BLOCKS_DIR, self.repo / DATASTORE_DIR
        if self.repo.exists() and not self.repo.is_dir():
            raise DatastoreError(f"{self.repo}: not a directory (a Helia repo is a directory)")
        if readonly and not (blocks.is_dir() or meta.is_dir()):
            raise DatastoreError(f"{self.repo}: not a Helia repo (no {BLOCKS_DIR}/ or "
                                 f"{DATASTORE_DIR}/ directory)")
        found = datastore_kind(meta) if meta.is_dir() and any(meta.iterdir()) else None
        if datastore is not None and found is not None and found != datastore:
            raise DatastoreError(f"{meta}: holds a datastore-{found} datastore, not "
                                 f"datastore-{datastore}")
        kind = found or datastore or new_datastore or "fs"
        # a new (missing or empty) repo gets both directories; an existing one is never
        # given a directory it lacks by opening it (a migration opens its source writable)
        new = not readonly and (not self.repo.exists() or not any(self.repo.iterdir()))
        if not (blocks.is_dir() or meta.is_dir() or new):
            raise DatastoreError(f"{self.repo}: not a Helia repo (no {BLOCKS_DIR}/ or "
                                 f"{DATASTORE_DIR}/ directory) and not empty")
        opened: list[tuple[str, BaseDatastore]] = []
        try:
            if blocks.is_dir() or new:
                opened.append(("/blocks", open_blockstore(blocks, readonly=readonly,
                                                          sync=sync)))
            if meta.is_dir() or new:
                opened.append(("/", self._open_datastore(meta, kind, readonly, sync)))
        except BaseException:
            for _, ds in opened:
                ds.close()
            raise
        self.datastore_kind = kind
        # the kind is in the uri when it is not the default, so an archive's manifest says
        # which datastore a new repo restored from it needs (Helia opens one kind only)
        uri = f"helia:{self.repo}" + ("?datastore=level" if kind == "level" else "")
        super().__init__(opened, uri=uri, readonly=readonly, location=str(self.repo))

    @staticmethod
    def _open_datastore(path: Path, kind: str, readonly: bool, sync: bool) -> BaseDatastore:
        if kind == "level":
            from dsbackup.datastores.leveldb import LevelDbDatastore

            # datastore-level opens with `compression: false, // same default as go`
            return LevelDbDatastore(path, readonly=readonly, compression=None)
        from dsbackup.datastores.fsds import FsDatastore

        return FsDatastore(path, readonly=readonly, sync=sync)


def open_helia(path: str, *, readonly: bool = False, datastore: str | None = None,
               sync: bool | str = True, new_datastore: str | None = None) -> HeliaDatastore:
    from dsbackup.datastores.registry import _bool_param

    return HeliaDatastore(path, readonly=readonly, datastore=datastore or None,
                          sync=_bool_param(sync, "sync"), new_datastore=new_datastore or None)


def source_datastore_kind(source_uri: str) -> str | None:
    """The datastore kind a ``helia:`` source URI (an archive manifest's) names: ``level``
    for ``helia:PATH?datastore=level``, else None."""
    from dsbackup.datastores.registry import parse_uri

    scheme, _, params = parse_uri(source_uri)
    kind = params.get("datastore") if scheme == "helia" else None
    return kind if kind in _KINDS else None
