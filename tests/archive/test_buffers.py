"""Reused decode buffers (archive/buffers.py): the ring's order and bounds, and readers that
decode every chunk (deep verify, ls) without a chunk-sized allocation per chunk."""

from __future__ import annotations

import tracemalloc

from dsbackup import datasets
from dsbackup.archive.buffers import PayloadRing, ThreadBuffers
from dsbackup.archive.listing import iter_listing
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def test_ring_hands_out_regions_in_order_and_reuses_them():
    ring = PayloadRing(100)
    a, ta = ring.take(40)
    b, tb = ring.take(40)
    assert ta is not None and tb is not None
    c, tc = ring.take(40)  # 20 left at the end, nothing free at the start: its own buffer
    assert tc is None and len(c) == 40 and ring.overflows == 1
    a[:] = b"a" * 40
    b[:] = b"b" * 40
    ring.release(ta)  # a's region is free again
    d, td = ring.take(30)  # does not fit at the end (20): wraps to the start
    d[:] = b"d" * 30
    assert bytes(b) == b"b" * 40 and td is not None
    ring.release(tb)
    ring.release(td)
    e, _ = ring.take(100)  # everything released: the whole ring
    assert len(e) == 100 and ring.overflows == 1


def test_thread_buffers_grow_and_are_reused():
    bufs = ThreadBuffers(1)
    first = bufs.take(0, 1000)
    again = bufs.take(0, 5000)  # within the same MiB: the same mapping
    assert first.obj is again.obj
    bigger = bufs.take(0, (1 << 20) + 1)
    assert bigger.obj is not first.obj and len(bigger) == (1 << 20) + 1


def _archive(tmp_path, blocks=24):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_blocks(blocks, seed=3))
    path = tmp_path / "a.tar.gz"
    BackupManager(BackupConfig(workers=1)).create_backup(f"lmdb:{src}", path)
    return path


def test_verify_and_ls_allocate_no_chunk_sized_buffer_per_chunk(tmp_path):
    """Deep verify and ls decode each chunk into buffers reused from one chunk to the next
    (mapped, outside the Python heap): Python's traced memory stays far below one chunk.
    Before, each chunk's member and payload were new bytes objects (two chunks' worth at a
    time), whose varying sizes made the heap creep up over a long run."""
    path = _archive(tmp_path)
    with ArchiveReader(path) as r:
        assert r.chunk_count >= 4
        chunk = min(r.entry(i).payload_len for i in range(r.chunk_count))
    assert chunk > 200 << 10
    tracemalloc.start()
    try:
        report = verify_archive(path, threads=2)
        with ArchiveReader(path) as r:
            keys = sum(1 for _ in iter_listing(r))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and report.deep_checked_chunks == report.chunks
    assert keys == 24
    assert peak < chunk // 2, (peak, chunk)


def test_reused_payload_is_the_same_buffer_from_chunk_to_chunk(tmp_path):
    path = _archive(tmp_path, blocks=12)
    with ArchiveReader(path) as r:
        views = [r.read_chunk(i, into=r.reused_payload) for i in range(2)]
        assert views[0].obj is views[1].obj  # the second chunk overwrote the first
        assert bytes(r.read_chunk(1)) == bytes(views[1])


def test_ring_full_to_the_oldest_region_hands_out_nothing_over_it():
    """A wrapped region that ends exactly where the oldest live region starts fills the
    ring (head == tail): the next request must not be given the oldest region's bytes. Equal
    chunk sizes make this exact fit the normal case once the ring goes round."""
    ring = PayloadRing(4)
    a, ta = ring.take(2)
    b, tb = ring.take(2)
    ring.release(ta)  # live: b at [2, 4)
    b[:] = b"bb"
    c, tc = ring.take(2)  # wraps to [0, 2): ends exactly at b's start
    c[:] = b"cc"
    assert tc is not None
    d, td = ring.take(2)  # the ring is full: its own buffer, not b's region
    d[:] = b"dd"
    assert bytes(b) == b"bb" and bytes(c) == b"cc"
    assert td is None and ring.overflows == 1
    ring.release(tb)
    e, te = ring.take(2)  # b's region is free again
    assert te is not None and bytes(c) == b"cc"


def test_ring_regions_never_overlap_live_ones():
    """The restore's pattern (sizes in 512-byte steps, a few distinct ones as chunks of equal
    blocks give; a batch released up to its last token now and then): a region handed out
    never overlaps one still live."""
    import random

    rng = random.Random(5)
    for _ in range(200):
        ring = PayloadRing(512 * rng.randint(4, 40))
        sizes = [512 * rng.randint(1, 6) for _ in range(rng.randint(1, 3))]
        live: list[tuple[int, int, int]] = []  # (token, start, end) in the ring
        base = memoryview(ring._buf).obj
        for _ in range(300):
            if live and rng.random() < 0.3:
                upto = live[rng.randrange(len(live))][0]
                ring.release(upto)
                live = [x for x in live if x[0] > upto]
                continue
            view, token = ring.take(rng.choice(sizes))
            if token is None:
                continue
            assert view.obj is base
            start = ring._head - len(view)
            end = ring._head
            for _, s, e in live:
                assert end <= s or start >= e, (start, end, s, e)
            live.append((token, start, end))
