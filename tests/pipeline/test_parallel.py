"""dsbackup.pipeline.parallel: the spill policy, on a ParallelScan's bookkeeping alone."""

from __future__ import annotations

import mmap
from collections import deque

from dsbackup.pipeline import parallel
from dsbackup.pipeline.central import ChunkSettings, ScanStats
from dsbackup.pipeline.parallel import KEEP_SLOTS, SPILLED, ParallelScan, _Range


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, msg: tuple) -> None:
        self.sent.append(msg)


def scan_with_held_chunks(held: int) -> tuple[ParallelScan, list[_Range]]:
    """Worker 0 holds `held` finished chunks (slot i holds bytes of value i) in two ranges
    behind a head range of worker 1."""
    settings = ChunkSettings(10, 4096, 1)
    scan = ParallelScan("lmdb", "/nonexistent", settings, 2, stats=ScanStats())
    nslots = parallel.SLOTS_PER_WORKER
    m = mmap.mmap(-1, nslots * scan.slot_size)
    scan._wmaps, scan._wviews = [m], [memoryview(m)]
    scan.conns = [FakeConn(), FakeConn()]
    head = _Range(0, b"", b"/b", worker=1)
    ranges = [head, _Range(1, b"/b", b"/c", worker=0, done=True),
              _Range(2, b"/c", b"/d", worker=0, done=True)]
    for i in range(held):
        off = i * scan.slot_size
        m[off:off + 100] = bytes([i]) * 100
        meta = (1, b"k%d" % i, b"k%d" % i, 0, 0, 100, 0, 100, 100, 100)
        ranges[1 + i * 2 // held].chunks.append((0, i, meta, None, None))
    return scan, ranges


def test_a_worker_keeps_its_first_chunks_and_spills_only_the_latest():
    held = KEEP_SLOTS + 5
    scan, ranges = scan_with_held_chunks(held)
    scan._spill_slots(0, deque(ranges))
    chunks = [c for r in ranges for c in r.chunks]
    kept = [c for c in chunks if c[1] >= 0]
    spilled = [c for c in chunks if c[1] == SPILLED]
    assert [c[1] for c in kept] == list(range(KEEP_SLOTS))  # the earliest stay in slots
    assert len(spilled) == 5 and scan.stats.spilled_chunks == 5
    # one message frees every spilled slot
    assert scan.conns[0].sent == [("free", list(range(held - 1, KEEP_SLOTS - 1, -1)))]
    assert not scan.conns[1].sent
    # a spilled chunk reads back exactly what its slot held, even once the slot is reused
    scan._wmaps[0][KEEP_SLOTS * scan.slot_size:] = bytes(len(scan._wmaps[0])
                                                         - KEEP_SLOTS * scan.slot_size)
    for c in spilled:
        value = int(c[2][1][1:])
        ready = scan._ready_chunk(*c)
        assert bytes(ready.body.data) == bytes([value]) * 100
    scan._spill.close()


def test_nothing_is_spilled_while_a_worker_holds_few_chunks():
    scan, ranges = scan_with_held_chunks(KEEP_SLOTS)
    scan._spill_slots(0, deque(ranges))
    assert scan.stats.spilled_chunks == 0 and scan._spill is None
    assert not scan.conns[0].sent
