"""The keys of a flatfs store over ``max_names`` names, a bucket at a time, for the
incremental planner (docs/INCREMENTAL.md, "A flatfs blockstore: listing speed"; dsbackup.engine.
flatfs_buckets).

:class:`KeyBuckets` lists the store once with the native ``SpillScan`` in its *typed* mode
(ext/flatspill.pyx): each name carries whether its file is a regular file, and the shard
directories holding anything not in place are noted, as ``FlatScan`` notes them, so the file
audit is the one the in-memory listing makes (flatfs_fastlist.py). The names go to bucket
files in a spill directory (flatfs_spill.py: locked, removed by :meth:`close`, a dead run's
removed by the next). :meth:`buckets` then gives the keys in increasing order, one sorted
bucket at a time (a ``FlatKeys``, trusted as the in-memory listing trusts); it can be walked
again (the files stay until :meth:`close`; the first walk writes each back sorted, so a later
walk only reads it). At most about ``max_names`` names are held.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

from dsbackup._ext.flatlist import FlatKeys
from dsbackup._ext.flatspill import SpillScan, read_sorted_records, resplit
from dsbackup.datastores.flatfs_audit import FileAudit, audit_flatfs
from dsbackup.datastores.flatfs_listing import SAMPLE_MAX, ShardLister, spill_error
from dsbackup.datastores.flatfs_spill import SpillDir, spill_root
from dsbackup.errors import Cancelled

__all__ = ["KeyBuckets"]


def _write_all(fd: int, data: bytes, path: str) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def _read_all(fd: int, path: str) -> bytes:
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        while len(data) < size:  # a short read
            more = os.read(fd, size - len(data))
            if not more:
                break
            data += more
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    return data


class KeyBuckets:
    """The keys from ``start`` on of the flatfs root ``lister`` lists, in buckets."""

    def __init__(self, lister: ShardLister, *, go_layout: bool = True, start: bytes = b"",
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.lister = lister
        self.go_layout = go_layout
        self.start = start
        self.should_stop = should_stop
        self.audit = FileAudit()
        self.peak_names = 0  # most names held at once
        self.recuts = 0
        self._dir: SpillDir | None = None
        self._held: FlatKeys | None = None  # the whole listing, when it fitted after all
        self._files: list[tuple[bytes, int]] = []  # bucket files still to cut or read
        # every bucket file in order with its count, once cut and written back sorted
        self._final: list[tuple[bytes, int]] | None = None

    def _note(self, n: int) -> None:
        self.peak_names = max(self.peak_names, n)

    def _check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"{os.fsdecode(self.lister.root)}: flatfs listing stopped")

    def open(self) -> KeyBuckets:
        """List the store (one pass) and make its file audit; the names go to bucket files
        (or stay held, when they fit in ``max_names`` after all)."""
        ls = self.lister
        rng = ls.name_range(self.start, None)
        lo = rng[0] if rng is not None else b"\xff"
        shards = ls.shard_dirs()
        fd = os.open(ls.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        where = ""
        try:
            scan = SpillScan(fd, shards, ls.shard.kind, ls.shard.param, ls.name_prefix, lo,
                             None, ls.max_names, ls.root, self._check, True)
            if scan.fill():
                names = scan.sorted_names()
                self._note(len(names))
                self._held = FlatKeys.from_names(names, len(ls.name_prefix))
                self._final = []
            else:
                target = max(1, ls.max_names // 2)
                done, total = scan.position
                estimate = ls.max_names * total / (done + 0.5)
                self._dir = SpillDir(spill_root(ls.spill_dir)).open()
                where = self._dir.path
                counts = scan.spill(self._dir.fd, where, math.ceil(estimate / target), b"b")
                self._note(scan.peak)
                self._files = [(b"b%d" % i, c) for i, c in enumerate(counts)]
            misfit = set(scan.misfit_shards())
            self.audit = audit_flatfs(ls.root, ls.shard, name_prefix=ls.name_prefix,
                                      go_layout=self.go_layout,
                                      clean_shards=[s for s in shards if s not in misfit])
        except OSError as e:
            self.close()
            raise spill_error(e, where, ls.max_names) from None
        except BaseException:
            self.close()
            raise
        finally:
            os.close(fd)
        return self

    def buckets(self) -> Iterator[FlatKeys]:
        """The keys in increasing order, a sorted bucket at a time (none empty). The first
        walk cuts a bucket over ``max_names`` again from its file; a later walk reads the
        same files again."""
        if self._held is not None:
            if len(self._held):
                yield self._held
            return
        d = self._dir
        if d is None:
            return
        plen = len(self.lister.name_prefix)
        try:
            if self._final is not None:
                for fname, n in self._final:  # sorted by the first walk
                    self._check()
                    fd = os.open(fname, os.O_RDONLY | os.O_CLOEXEC, dir_fd=d.fd)
                    try:
                        records = _read_all(fd, os.path.join(d.path, fname.decode()))
                    finally:
                        os.close(fd)
                    self._note(n)
                    yield FlatKeys.from_records(records, n, plen)
                return
            yield from self._first_walk(d, plen)
        except OSError as e:
            raise spill_error(e, d.path, self.lister.max_names) from None

    def _first_walk(self, d: SpillDir, plen: int) -> Iterator[FlatKeys]:
        max_names = self.lister.max_names
        target = max(1, max_names // 2)
        final: list[tuple[bytes, int]] = []
        while self._files:
            self._check()
            fname, count = self._files.pop(0)
            if count > max_names:  # skewed names: cut again from its file
                sample = min(max_names, SAMPLE_MAX)
                self._note(sample)
                self.recuts += 1
                tag = b"s%d." % self.recuts
                sub = resplit(d.fd, fname, count, math.ceil(count / target), sample, tag,
                              d.path)
                os.unlink(fname, dir_fd=d.fd)
                self._files[:0] = [(tag + b"%d" % i, c) for i, c in enumerate(sub)]
                continue
            if not count:
                os.unlink(fname, dir_fd=d.fd)
                continue
            records, n = read_sorted_records(d.fd, fname, d.path)
            self._note(n)
            # written back sorted (the same size: it fits where it was), for the next walk
            fd = os.open(fname, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, dir_fd=d.fd)
            try:
                _write_all(fd, records, os.path.join(d.path, fname.decode()))
            finally:
                os.close(fd)
            final.append((fname, n))
            yield FlatKeys.from_records(records, n, plen)
            del records
        self._final = final

    def close(self) -> None:
        """Remove the spill directory (idempotent)."""
        self._held = None
        if self._dir is not None:
            self._dir.close()
            self._dir = None

    def __enter__(self) -> KeyBuckets:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
