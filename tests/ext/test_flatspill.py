"""ext/flatspill.pyx on its own: the listing releases the GIL, a bucket cut again gives
smaller buckets that cover its names in order, a torn bucket file is an error."""

from __future__ import annotations

import os

import pytest

from dsbackup._ext.flatspill import SpillScan, read_sorted, resplit
from tests.ext.test_gil import _check_releases
from tests.support.flatfs_files import random_names


def _one_shard(root, n: int) -> list[bytes]:
    """``n`` names all in shard directory ``AB`` (next-to-last/2)."""
    (root / "AB").mkdir(parents=True)
    names = sorted(n[:-3] + "ABQ" for n in random_names(n, seed=2))
    for name in names:
        os.close(os.open(root / "AB" / f"{name}.data", os.O_CREAT | os.O_WRONLY, 0o644))
    return [n.encode() for n in names]


def test_the_listing_releases_the_gil(tmp_path):
    want = _one_shard(tmp_path / "b", 5000)
    fd = os.open(tmp_path / "b", os.O_RDONLY | os.O_DIRECTORY)
    try:
        def listings():
            for _ in range(8):  # one listing is ~2 ms: the GIL is taken back between them
                scan = SpillScan(fd, [b"AB"], "next-to-last", 2, b"", b"", None, 10**6)
                assert scan.fill()

        _check_releases(listings)
        scan = SpillScan(fd, [b"AB"], "next-to-last", 2, b"", b"", None, 10**6)
        assert scan.fill() and scan.sorted_names() == want
    finally:
        os.close(fd)


def test_resplit_cuts_a_bucket_into_smaller_ordered_ones(tmp_path):
    names = sorted(n.encode() for n in random_names(3000, seed=8))
    (tmp_path / "b0").write_bytes(b"".join(bytes([len(n)]) + n for n in reversed(names)))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        counts = resplit(fd, b"b0", len(names), 7, 100, b"s.", str(tmp_path))
        assert len(counts) == 7 and sum(counts) == len(names) and max(counts) < len(names)
        got = []
        for i in range(len(counts)):
            part = read_sorted(fd, b"s.%d" % i)
            assert len(part) == counts[i]
            got += part
        assert got == names  # each sub-bucket a key range, in order
        (tmp_path / "torn").write_bytes(b"\x05ABC")
        with pytest.raises(OSError, match="ends inside a record"):
            read_sorted(fd, b"torn")
    finally:
        os.close(fd)
