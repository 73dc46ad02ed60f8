"""One native listing of a flatfs root: its sorted keys and its file audit in one pass.

:func:`list_flatfs` lists every shard directory with the native ``FlatScan``
(ext/flatlist.pyx: parallel threads, the GIL released, no Python object per file). Names in
place become keys (sorted, in a :class:`~dsbackup._ext.flatlist.FlatKeys`); a shard directory
holding anything else is looked at name by name by the audit (flatfs_audit.py), which also
accounts for the root's own entries. With ``keys=False`` only the audit is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dsbackup._ext.flatlist import FlatKeys, FlatScan
from dsbackup.datastores.flatfs_audit import FileAudit, audit_flatfs
from dsbackup.datastores.flatfs_layout import ShardFunc

__all__ = ["FlatListing", "list_flatfs", "shard_dirs"]


@dataclass
class FlatListing:
    """``keys``: every key of the store in increasing order (None when not asked for);
    ``audit``: the files a scan does not read (see flatfs_audit.py); ``over``: the store
    holds more keys than the listing was to hold (``max_keys``): neither is given."""

    keys: FlatKeys | None
    audit: FileAudit
    over: bool = False


def shard_dirs(root: bytes) -> list[bytes]:
    """The root's shard directories: every directory not starting with ``.``, sorted."""
    out = []
    with os.scandir(root) as it:
        for e in it:
            if e.name[:1] != b"." and e.is_dir(follow_symlinks=False):
                out.append(e.name)
    out.sort()
    return out


def list_flatfs(root: bytes, shard: ShardFunc, *, name_prefix: bytes = b"",
                go_layout: bool = True, threads: int = 1, keys: bool = True,
                max_keys: int = 0) -> FlatListing:
    """List ``root`` once (``threads`` native threads): its keys and its file audit. With
    ``max_keys`` the listing stops once it has listed more keys than that (counted a shard
    directory at a time): ``over`` is then True (no keys, no audit)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        shards = shard_dirs(root)
        scan = FlatScan(fd, shards, shard.kind, shard.param, name_prefix, keys)
        scan.run(threads, max_keys)
    finally:
        os.close(fd)
    if scan.over:
        return FlatListing(None, FileAudit(), over=True)
    misfit = set(scan.misfit_shards())
    clean = {s for s in shards if s not in misfit}
    audit = audit_flatfs(root, shard, name_prefix=name_prefix, go_layout=go_layout,
                         clean_shards=clean)
    return FlatListing(scan.keys() if keys else None, audit)
