"""The mean value size of a flatfs store without ``diskUsage.cache``, from a sample of files.

The automatic chunk size (1 MiB / mean record size, engine/config.py) needs the store's size;
go-ds-flatfs keeps it in ``diskUsage.cache``, but Helia's blockstore-fs never writes one and a
store copied by other tools may lack it. Then a few shard directories are listed and a few
hundred of their block files ``lstat``-ed:

- deterministic: shard directories in name order, the picked ones evenly spread over them
  (16 first, then the midpoints between those, ... while too few files were found, up to
  ``MAX_DIRS`` holding files), and in each the names sorted and picked evenly spread; the
  same files give the same sample, whatever order ``readdir`` returns them in;
- only what a scan reads: valid names in their own shard (``ShardLister.names_in``: Helia's
  ``B`` prefix, any shard function; temp files, misplaced and foreign names left out), and
  regular files only; empty shard directories (go-ds-flatfs never removes one) are passed by;
- bounded: at most ``MAX_DIRS`` directories holding files listed (empty ones cost a
  ``getdents`` each, at most as many as ``approx_count`` lists), the first ``DIR_ENTRIES``
  entries of each, and ``SAMPLE_FILES`` files ``lstat``-ed, whatever the store's size; a
  store of up to ``MAX_DIRS`` files in as many directories has them all in its sample. A
  directory of more entries (``next-to-last/2`` over ~16 M files, the few large
  directories of ``prefix/N``) is sampled from those ``readdir`` returns first: the same
  directory gives the same sample, a copy of it may not.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator

from dsbackup.datastores.flatfs_layout import EXTENSION
from dsbackup.datastores.flatfs_listing import ShardLister

__all__ = ["SAMPLE_FILES", "SAMPLE_DIRS", "MAX_DIRS", "DIR_ENTRIES", "sample_mean_size",
           "spread"]

SAMPLE_FILES = 256  # files lstat-ed at most
SAMPLE_DIRS = 16  # shard directories the sample is spread over first
MAX_DIRS = 64  # shard directories holding files listed at most
DIR_ENTRIES = 1 << 14  # entries read of one shard directory at most
_EXT_LEN = len(EXTENSION)


def spread(n: int, first: int = SAMPLE_DIRS) -> Iterator[int]:
    """Indexes ``0 <= i < n``, each once: ``first`` evenly spread, then the midpoints between
    those at each finer level, then the rest in order."""
    seen: set[int] = set()
    m = max(1, first)
    while m < 2 * n:
        for k in range(m):
            i = k * n // m
            if i not in seen:
                seen.add(i)
                yield i
        m *= 2
    for i in range(n):
        if i not in seen:
            yield i


def sample_mean_size(lister: ShardLister, dirs: list[bytes] | None = None) -> float | None:
    """The mean size of the sampled block files of the store ``lister`` lists (``dirs``: its
    shard directories, sorted; listed when None), or None when no file was found."""
    if dirs is None:
        dirs = lister.shard_dirs()
    if not dirs:
        return None
    per_dir = max(1, -(-SAMPLE_FILES // min(SAMPLE_DIRS, len(dirs))))
    total = files = listed = 0
    for i in spread(len(dirs)):
        if files >= SAMPLE_FILES or listed >= MAX_DIRS:
            break
        names = _names(lister, dirs[i])
        if not names:
            continue
        listed += 1
        names.sort()
        take = min(per_dir, len(names), SAMPLE_FILES - files)
        prefix = b"%s/%s/" % (lister.root, dirs[i])
        for j in range(take):
            try:
                st = os.lstat(prefix + names[j * len(names) // take] + EXTENSION)
            except OSError:  # removed meanwhile, unreadable: not in the sample
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                files += 1
    return total / files if files else None


def _names(lister: ShardLister, shard: bytes) -> list[bytes]:
    """The valid names of ``shard`` among its first ``DIR_ENTRIES`` entries."""
    try:
        with os.scandir(b"%s/%s" % (lister.root, shard)) as it:
            entries = [e.name for e in itertools.islice(it, DIR_ENTRIES)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return lister.own_names([n[:-_EXT_LEN] for n in entries if n.endswith(EXTENSION)], shard)
