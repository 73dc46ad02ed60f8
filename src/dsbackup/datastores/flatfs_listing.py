"""Listing a flatfs directory in global key order with bounded memory, reading each shard
directory once.

With ``prefix/N`` shards are key ranges: they are listed one at a time, one shard's names
held. Otherwise the native ``SpillScan`` (ext/flatspill.pyx) lists every shard directory
once and holds the names in range (about name length + 9 bytes each) up to ``max_names``;
beyond that it cuts the range into buckets at split keys sampled from the names held so
far, writes every name to its bucket's file in a spill directory (flatfs_spill.py) and the
buckets are read back, sorted and yielded one at a time; a bucket over ``max_names`` (skewed
names) is cut again from its file. At most ``max_names`` names are held at any time
(``peak_names``).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Iterator

from dsbackup._ext.flatspill import SpillScan, read_sorted, resplit
from dsbackup.datastores.flatfs_layout import EXTENSION, ShardFunc, is_valid_name
from dsbackup.datastores.flatfs_spill import SpillDir, spill_root
from dsbackup.errors import Cancelled, DatastoreError

__all__ = ["ShardLister", "spill_error"]

_EXT_LEN = len(EXTENSION)
SAMPLE_MAX = 1 << 18  # names sampled to cut an oversized bucket
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def spill_error(e: OSError, where: str, max_names: int) -> BaseException:
    """The error to raise for ``e`` met by a listing spilling into directory ``where``: a
    DatastoreError when a spill file's (the disk full, ...), else ``e`` itself (a shard
    directory's, named by the error)."""
    if not (where and isinstance(e.filename, str) and e.filename.startswith(where + os.sep)):
        return e
    verb = "write" if e.errno in _WRITE_ERRORS else "write or read"
    return DatastoreError(
        f"{e.filename}: cannot {verb} the spill file of a flatfs listing: "
        f"{e.strerror} (a listing of more than max_names={max_names} names "
        "sorts them on disk, about (name length + 1) bytes a name; free space "
        "there or set TMPDIR, or the flatfs URI's spill_dir=, to a larger disk; "
        "docs/DATASTORES.md)")


class ShardLister:
    """Lists the ``.data`` names (without extension) of a flatfs root."""

    def __init__(self, root: bytes, shard: ShardFunc, max_names: int,
                 name_prefix: bytes = b"", spill_dir: str | None = None) -> None:
        self.root = root
        self.shard = shard
        self.max_names = max_names
        self.name_prefix = name_prefix
        self.spill_dir = spill_dir  # None: $TMPDIR
        # asked between shard directories: True stops a listing (raises Cancelled); a backup
        # sets it for its scan (FlatfsDatastore.set_listing_stop)
        self.should_stop: Callable[[], bool] | None = None
        self.passes = 0  # times sorted_names listed the shard directories (one per call)
        self.spills = 0  # listings that went through bucket files
        self.recuts = 0  # buckets over max_names cut again from their file
        self.peak_names = 0  # most names held at once (a sorted list, the native set)

    def shard_dirs(self) -> list[bytes]:
        out = []
        with os.scandir(self.root) as it:
            for e in it:
                if e.name[:1] != b"." and e.is_dir(follow_symlinks=False):
                    out.append(e.name)
        out.sort()
        return out

    def names_in(self, shard: bytes, lo: bytes, hi: bytes | None) -> list[bytes]:
        """Valid names (no extension) in one shard dir that map to it, in ``[lo, hi)``."""
        try:
            entries = os.listdir(b"%s/%s" % (self.root, shard))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [n[:-_EXT_LEN] for n in entries if n.endswith(EXTENSION)]
        if lo:
            names = [n for n in names if n >= lo]
        if hi is not None:
            names = [n for n in names if n < hi]
        return self.own_names(names, shard)

    def own_names(self, names: list[bytes], shard: bytes) -> list[bytes]:
        """Those of ``names`` (file names without extension) that are valid and map to
        ``shard``."""
        dir_of = self.shard.dir_of
        if self.name_prefix:
            p = self.name_prefix
            return [n for n in names if n.startswith(p) and is_valid_name(n)
                    and dir_of(n) == shard]
        return [n for n in names if is_valid_name(n) and dir_of(n) == shard]

    def name_range(self, start: bytes, end: bytes | None) -> tuple[bytes, bytes | None] | None:
        """Map a key range to a name range (key ``b"/" + K`` is name ``name_prefix + K``);
        None when empty."""
        p = self.name_prefix
        if start <= b"/":
            lo = b""
        elif start[:1] == b"/":
            lo = p + start[1:]
        else:
            return None
        if end is None:
            hi = None
        elif end <= b"/":
            return None
        elif end[:1] == b"/":
            hi = p + end[1:]
        else:
            hi = None
        if hi is not None and lo >= hi:
            return None
        return lo, hi

    def sorted_names(self, start: bytes, end: bytes | None) -> Iterator[list[bytes]]:
        """Sorted lists of names in the key range, in global order, memory-bounded; the
        shard directories are read once (one pass)."""
        rng = self.name_range(start, end)
        if rng is None:
            return
        lo, hi = rng
        shards = self.shard_dirs()
        self.passes += 1
        if self.shard.ordered_by_shard:
            for s in shards:
                names = self.names_in(s, lo, hi)
                names.sort()
                self._held(len(names))
                if names:
                    yield names
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            scan = SpillScan(fd, shards, self.shard.kind, self.shard.param, self.name_prefix,
                             lo, hi, self.max_names, self.root, self._check)
            whole = scan.fill()
            if whole:
                names = scan.sorted_names()
        except BaseException:
            os.close(fd)
            raise
        if whole:
            os.close(fd)
            self._held(len(names))
            if names:
                yield names
            return
        yield from self._spilled(scan, fd)

    def _spilled(self, scan: SpillScan, root_fd: int) -> Iterator[list[bytes]]:
        """The rest of a listing over ``max_names`` names, through bucket files."""
        self.spills += 1
        target = max(1, self.max_names // 2)
        done, total = scan.position
        estimate = self.max_names * total / (done + 0.5)
        sd = SpillDir(spill_root(self.spill_dir))
        where = ""
        try:
            with sd:
                where = sd.path
                try:
                    counts = scan.spill(sd.fd, sd.path, math.ceil(estimate / target), b"b")
                finally:
                    os.close(root_fd)
                    root_fd = -1
                self._held(scan.peak)
                pending = [(b"b%d" % i, c) for i, c in enumerate(counts)]
                cuts = 0
                while pending:
                    fname, count = pending.pop(0)
                    if count > self.max_names:
                        sample = min(self.max_names, SAMPLE_MAX)
                        self._held(sample)
                        cuts += 1
                        self.recuts += 1
                        tag = b"s%d." % cuts
                        sub = resplit(sd.fd, fname, count, math.ceil(count / target), sample,
                                      tag, sd.path)
                        os.unlink(fname, dir_fd=sd.fd)
                        pending[:0] = [(tag + b"%d" % i, c) for i, c in enumerate(sub)]
                        continue
                    if not count:
                        continue
                    names = read_sorted(sd.fd, fname, where)
                    os.unlink(fname, dir_fd=sd.fd)
                    self._held(len(names))
                    yield names
        except OSError as e:
            raise spill_error(e, where, self.max_names) from None
        finally:
            if root_fd >= 0:
                os.close(root_fd)

    def _check(self) -> None:
        """Between shard directories: stop when the reader's owner asks (should_stop)."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"{os.fsdecode(self.root)}: flatfs listing stopped")

    def _held(self, n: int) -> None:
        if n > self.peak_names:
            self.peak_names = n
