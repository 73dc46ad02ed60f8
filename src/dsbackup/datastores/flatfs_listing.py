"""Listing a flatfs directory in global key order with bounded memory.

Names are listed shard by shard and sorted in memory. With ``prefix/N`` shards are key
ranges, so one shard's names are held at a time. Otherwise every name in the scanned range
is held (about 100 bytes a name) up to ``max_names``; beyond that the range is cut into
windows at split keys sampled from the names seen so far, and the shard directories are
listed once per window.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from dsbackup.datastores.flatfs_layout import EXTENSION, ShardFunc, is_valid_name

__all__ = ["ShardLister"]

_EXT_LEN = len(EXTENSION)


class ShardLister:
    """Lists the ``.data`` names (without extension) of a flatfs root."""

    def __init__(self, root: bytes, shard: ShardFunc, max_names: int,
                 name_prefix: bytes = b"") -> None:
        self.root = root
        self.shard = shard
        self.max_names = max_names
        self.name_prefix = name_prefix
        self.passes = 0  # times sorted_names listed the shard directories (one per window)

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
        dir_of = self.shard.dir_of
        names = [n[:-_EXT_LEN] for n in entries if n.endswith(EXTENSION)]
        if lo:
            names = [n for n in names if n >= lo]
        if hi is not None:
            names = [n for n in names if n < hi]
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
        """Sorted lists of names in the key range, in global order, memory-bounded."""
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
                if names:
                    yield names
            return
        acc: list[bytes] = []
        for i, s in enumerate(shards):
            acc += self.names_in(s, lo, hi)
            if len(acc) > self.max_names:
                yield from self._windowed(shards, lo, hi, acc, (i + 1) / len(shards))
                return
        acc.sort()
        if acc:
            yield acc

    def _windowed(self, shards: list[bytes], lo: bytes, hi: bytes | None,
                  sample: list[bytes], fraction: float) -> Iterator[list[bytes]]:
        sample.sort()
        windows = int(len(sample) / fraction / self.max_names) + 1
        step = max(len(sample) // windows, 1)
        cuts = sorted({sample[j] for j in range(step, len(sample), step)})
        del sample[:]
        bounds: list[bytes | None] = [*cuts, hi]
        w_lo = lo
        for w_hi in bounds:
            self.passes += 1
            names: list[bytes] = []
            for s in shards:
                names += self.names_in(s, w_lo, w_hi)
            names.sort()
            if names:
                yield names
            if w_hi is None:
                return
            w_lo = w_hi

