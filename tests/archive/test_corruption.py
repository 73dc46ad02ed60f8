"""Damage detection: every single-bit flip, random flips, and truncation; salvage."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
from concurrent.futures import ProcessPoolExecutor

import pytest

from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.salvage import salvage
from dsbackup.archive.verify import verify_archive


def member_map(path) -> list[tuple[int, int, str, int | None]]:
    """(start, end, part, chunk) for every member of an intact archive."""
    with ArchiveReader(path) as r:
        t = r.trailer
        out = [(0, r.index.manifest_length, "manifest", None)]
        for e in r.index.entries():
            out.append((e.offset, e.offset + e.length, "chunk", e.seq))
        for i in range(r.index.catalog_count):
            c = r.index.catalog(i)
            out.append((c.offset, c.offset + c.length, "catalog", i))
        out.append((t.index_offset, t.index_offset + t.index_length, "index", None))
        out.append((t.summary_offset, t.summary_offset + t.summary_length, "summary", None))
        out.append((t.trailer_offset, r.size, "trailer", None))
    return sorted(out)


def where(members, off):
    for s, e, part, chunk in members:
        if s <= off < e:
            return part, chunk
    raise AssertionError(off)


def flip(fd: int, off: int, bit: int) -> None:
    b = os.pread(fd, 1, off)[0]
    os.pwrite(fd, bytes([b ^ (1 << bit)]), off)


def assert_detected(report, part, chunk, off):
    assert not report.ok, f"flip at {off} ({part} {chunk}) not detected"
    if part in ("chunk", "catalog"):
        assert chunk in report.bad_chunks, (off, part, chunk, report.errors)
        assert f"chunk {chunk}" in " ".join(report.errors) or f"catalog {chunk}" in " ".join(
            report.errors)
    else:
        text = " ".join(report.errors)
        assert part in text or part in report.bad_parts, (off, part, report.errors)


def _flip_range(path: str, members, lo: int, hi: int) -> int:
    """Flip every bit of bytes [lo, hi) of a private copy of the archive, one at a time."""
    fd = os.open(path, os.O_RDWR)
    n = 0
    try:
        for off in range(lo, hi):
            part, chunk = where(members, off)
            for bit in range(8):
                flip(fd, off, bit)
                report = verify_archive(path, deep=True, threads=1)
                flip(fd, off, bit)
                assert_detected(report, part, chunk, off)
                n += 1
    finally:
        os.close(fd)
    return n


def test_every_single_bit_flip_is_detected(tmp_path, make_archive):
    path = tmp_path / "small.tar.gz"
    make_archive(path, [(b"/a", b"hello"), (b"/b", b"world" * 3), (b"/c/d", b"")],
                 chunk_size=1000)
    members = member_map(path)
    size = path.stat().st_size
    procs = 2
    copies = []
    for i in range(procs):
        c = tmp_path / f"copy{i}.tar.gz"
        shutil.copyfile(path, c)
        copies.append(str(c))
    step = -(-size // procs)
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as pool:
        futs = [pool.submit(_flip_range, copies[i], members, i * step,
                            min(size, (i + 1) * step)) for i in range(procs)]
        assert sum(f.result() for f in futs) == size * 8
    assert verify_archive(path).ok


def test_random_flips_in_a_larger_archive(tmp_path, make_archive):
    rng = random.Random(7)
    records = sorted((b"/blocks/%08d" % i, rng.randbytes(rng.randrange(0, 40000)))
                     for i in range(250))
    path = tmp_path / "big.tar.gz"
    make_archive(path, records, chunk_size=8, chunk_max_bytes=256 << 10, catalog=True)
    size = path.stat().st_size
    assert size > 4_500_000
    members = member_map(path)
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(1000):
            off, bit = rng.randrange(size), rng.randrange(8)
            part, chunk = where(members, off)
            flip(fd, off, bit)
            report = verify_archive(path, deep=part not in ("chunk", "catalog"), threads=2)
            if part in ("chunk", "catalog"):  # a quick verify must already see it
                assert chunk in report.bad_chunks
            flip(fd, off, bit)
            assert_detected(report, part, chunk, off)
    finally:
        os.close(fd)


def test_truncation_at_member_boundaries_and_salvage(tmp_path, make_archive):
    records = [(b"/k/%05d" % i, b"value-%d" % i * 20) for i in range(400)]
    path = tmp_path / "a.tar.gz"
    make_archive(path, records, chunk_size=20)
    members = member_map(path)
    data = path.read_bytes()
    chunk_ends = {chunk: e for s, e, part, chunk in members if part == "chunk"}
    with ArchiveReader(path) as r:
        entries = r.index.entries()
    cut_points = sorted({p + d for s, e, _, _ in members for p in (s, e) for d in (-1, 0, 1)
                         if 0 < p + d < len(data)})
    for cut in cut_points:
        t = tmp_path / "t.tar.gz"
        t.write_bytes(data[:cut])
        report = verify_archive(t)
        assert not report.ok and "trailer" in " ".join(report.errors)
        sal = salvage(t)
        got = [c.seq for c in sal.chunks]
        expect = [seq for seq, end in sorted(chunk_ends.items()) if end <= cut]
        assert got == expect, cut
        for c in sal.chunks:
            e = entries[c.seq]
            assert (c.first_key, c.last_key, c.records) == (e.first_key, e.last_key, e.records)
        if expect != list(chunk_ends):
            assert not sal.complete
            assert sal.lost_ranges
        recovered = sum(c.records for c in sal.chunks)
        assert recovered == sum(entries[s].records for s in expect)


def test_salvage_skips_a_damaged_chunk_and_names_the_lost_range(tmp_path, make_archive):
    records = [(b"/k/%05d" % i, os.urandom(300)) for i in range(300)]
    path = tmp_path / "a.tar.gz"
    make_archive(path, records, chunk_size=25, level=0)
    members = member_map(path)
    chunks = [(s, e, c) for s, e, p, c in members if p == "chunk"]
    s, e, victim = chunks[len(chunks) // 2]
    fd = os.open(path, os.O_RDWR)
    flip(fd, (s + e) // 2, 3)
    os.close(fd)
    sal = salvage(path)
    seqs = [c.seq for c in sal.chunks]
    assert victim not in seqs
    assert seqs == [c for _, _, c in chunks if c != victim]
    assert sal.has_trailer and sal.has_index
    (after, before, missing), = sal.lost_ranges
    assert missing == [victim]
    assert after == sal.chunks[victim - 1].last_key
    assert before == sal.chunks[victim].first_key
    report = verify_archive(path)
    assert report.bad_chunks == [victim]
    assert report.bad_ranges[0]["first_key"] <= report.bad_ranges[0]["last_key"]


@pytest.mark.parametrize("threads", [1, 4])
def test_verify_sampled(tmp_path, make_archive, threads):
    path = tmp_path / "a.tar.gz"
    make_archive(path, [(b"/k%04d" % i, b"x" * 50) for i in range(1000)], chunk_size=10)
    report = verify_archive(path, sample=0.1, threads=threads, seed=1)
    assert report.ok and report.mode == "sampled"
    assert report.checked_chunks == report.chunks
    assert 0 < report.deep_checked_chunks < report.chunks
