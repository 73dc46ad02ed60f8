"""The parallel scan of a flatfs store: the planner lists it once and hands every stripe its
keys, so no worker lists the store again (a key range of a ``next-to-last/2`` store maps to no
subset of its shard directories: a range scan lists them all); the chunks are those of the
central scan, byte for byte."""

from __future__ import annotations

import base64
import hashlib
import os
import random

from dsbackup.datastores import open_datastore
from dsbackup.pipeline.central import ChunkSettings, ScanStats, central_chunks
from dsbackup.pipeline.frames import READ_SIZE, FrameReader
from dsbackup.pipeline.parallel import ParallelScan
from dsbackup.pipeline.sources import DatastoreSource

SETTINGS = ChunkSettings(16, 1 << 16, 1, ("/CIQA*",), True)


def _key(i: int) -> bytes:
    digest = hashlib.sha256(b"%d" % i).digest()
    return b"/CIQ" + base64.b32encode(digest).rstrip(b"=")[:40]


def _store(path, n: int = 2000) -> str:
    rng = random.Random(3)
    ds = open_datastore(f"flatfs:{path}")
    keys = sorted({_key(i) for i in range(n)})
    ds.put_many(keys, [rng.randbytes(rng.randrange(10, 1500)) for _ in keys])
    ds.close()
    return f"flatfs:{path}"


def _dangling(path, key: bytes) -> str:
    """A symbolic link with a record's name whose target is gone (listed, then unreadable)."""
    ds = open_datastore(f"flatfs:{path}", readonly=True)
    link = os.fsdecode(ds._file(key[1:]))
    ds.close()
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.join(str(path), "gone"), link)
    return link


def _chunks(it) -> list[tuple]:
    out = []
    for c in it:
        cat = getattr(c, "catalog_body", None)  # a ReadyChunk's; a framed chunk's: catalog
        cat = bytes(cat.data) if cat is not None else getattr(c, "catalog", None)
        out.append((bytes(c.first_key), bytes(c.last_key), c.record_count, c.keys_xxh3,
                    c.payload_xxh3, bytes(c.body.data), cat))
    return out


def test_parallel_flatfs_scan_lists_the_store_once_and_equals_the_central_scan(tmp_path):
    uri = _store(tmp_path / "blocks")
    link = _dangling(tmp_path / "blocks", _key(100_000))
    pstats = ScanStats()
    parallel = _chunks(ParallelScan("datastore", uri, SETTINGS, 2, stats=pstats))
    cstats = ScanStats()
    ds = open_datastore(uri, readonly=True)
    try:
        central = _chunks(central_chunks(ds, SETTINGS, threads=2, stats=cstats))
    finally:
        ds.close()
    assert len(central) > 80  # ~30 stripes of 4 chunks: a listing each before the fix
    assert parallel == central
    assert pstats.plan_listing_passes == 1
    assert pstats.worker_listing_passes == 0
    assert (pstats.excluded_records, pstats.excluded_bytes) == (
        cstats.excluded_records, cstats.excluded_bytes)
    assert pstats.excluded_records > 0
    assert pstats.unreadable_files == cstats.unreadable_files == 1
    assert pstats.unreadable_examples == cstats.unreadable_examples
    assert pstats.unreadable_examples[0].startswith(link)


def test_keyed_stripes_are_the_stripes_with_their_keys(tmp_path):
    uri = _store(tmp_path / "blocks", 1500)
    ds = open_datastore(uri, readonly=True)
    try:
        src = DatastoreSource(ds, SETTINGS)
        assert src.keyed
        every = [k for batch in ds.scan_keys() for k in batch]
        assert every == sorted(_key(i) for i in range(1500))
        ends = list(src.stripes(64, 1 << 30))
        stripes = list(src.keyed_stripes(64, 1 << 20))
        assert [e for e, _ in stripes] == [*ends, None]
        assert len(stripes) > 10
        assert [k for _, keys in stripes for k in keys] == every
        starts = [b"", *ends]
        for (end, keys), start in zip(stripes, starts):
            assert keys[0] == start or start == b""
            assert end is None or keys[-1] < end
        # a stripe of more keys than max_keys comes without them; the others keep theirs
        sizes = sorted(len(keys) for _, keys in stripes)
        cap = sizes[len(sizes) // 2]
        capped = list(src.keyed_stripes(64, cap))
        assert [e for e, _ in capped] == [e for e, _ in stripes]
        for (_, full), (_, keys) in zip(stripes, capped):
            assert keys == (full if len(full) <= cap else None)
        assert any(keys is None for _, keys in capped)
        assert ds.listing_passes == 4  # scan_keys, stripes() and two keyed walks
    finally:
        ds.close()


def test_a_worker_reads_its_keys_without_listing_and_counts_vanished_files(tmp_path):
    uri = _store(tmp_path / "blocks", 600)
    ds = open_datastore(uri, readonly=True)
    try:
        src = DatastoreSource(ds, SETTINGS)
        (end, keys), *_ = list(src.keyed_stripes(200, 1 << 20))
        passes = ds.listing_passes

        def scan(with_keys) -> list[tuple]:
            src.begin(b"", end, with_keys)
            return _chunks(iter(src.next_chunk, None))

        listed = scan(None)  # the range scan lists the store
        assert ds.listing_passes == passes + 1
        assert scan(keys) == listed and listed
        assert ds.listing_passes == passes + 1  # the given keys: nothing listed
        os.unlink(ds._file(keys[5][1:]))  # vanishes after the planner listed it
        assert ds.skipped.count == 0
        after = scan(keys)
        assert ds.skipped.count == 1 and "(vanished)" in ds.skipped.examples[0]
        assert sum(c[2] for c in after) == sum(c[2] for c in listed) - 1
    finally:
        ds.close()


class _CountingConn:
    """A parent-side pipe end that counts the ranges sent."""

    def __init__(self, conn, tally: dict) -> None:
        self.conn, self.tally = conn, tally

    def fileno(self) -> int:
        return self.conn.fileno()

    def poll(self, *a):
        return self.conn.poll(*a)

    def send(self, msg) -> None:
        if msg[0] == "range":
            self.tally["sent"] += 1
        self.conn.send(msg)


class _CountingReader(FrameReader):
    """The parent's bulk reader of the planner's pipe, counting the stripes read."""

    def __init__(self, fd: int, tally: dict) -> None:
        super().__init__(fd)
        self.tally = tally

    def read(self):
        msgs = super().read()
        for msg in msgs:
            if msg[0] == "stripes":
                self.tally["received"] += len(msg[1])
            elif msg[0] == "plan_done":
                self.tally["received"] += 1
        self.tally["held"] = max(self.tally["held"],
                                 self.tally["received"] - self.tally["sent"])
        return msgs


def test_the_parent_stops_reading_a_planner_that_runs_ahead():
    """Keyed stripes carry their keys, so the parent reads the planner only while fewer than
    QUEUED_STRIPES stripes per worker wait: a planner faster than the workers waits in send
    instead of filling the parent's memory (here: 60 stripes, a worker taking 5 ms each)."""
    import multiprocessing
    import threading
    import time

    from dsbackup.pipeline import parallel

    scan = ParallelScan("datastore", "/nonexistent", ChunkSettings(4, 1 << 16, 1), 1)
    tally = {"received": 0, "sent": 0, "held": 0}
    wp, wc = multiprocessing.Pipe()
    pp, pc = multiprocessing.Pipe()
    scan.conns = [_CountingConn(wp, tally), _CountingConn(pp, tally)]
    scan._readers = [FrameReader(wp.fileno()), _CountingReader(pp.fileno(), tally)]
    never = [os.pipe() for _ in range(2)]  # the processes' sentinels: they never end

    class Proc:
        def __init__(self, fd: int) -> None:
            self.sentinel = fd

    scan.procs = [Proc(r) for r, _ in never]
    stripes = 60

    pad = b"p" * READ_SIZE  # a message longer than one read: at most one comes per read

    def key(i: int) -> bytes:
        return b"/K%03d" % i + pad

    def planner() -> None:
        assert pc.recv()[0] == "plan"
        for i in range(1, stripes):
            pc.send(("stripes", [key(i)], [[key(i - 1)]]))
        pc.send(("plan_done", [key(stripes - 1)]))

    def worker() -> None:
        while (msg := wc.recv())[0] == "range":
            _, rid, start, _end, _freed, keys = msg
            assert keys == [start or key(0)]
            time.sleep(0.005)
            meta = (1, keys[0], keys[0], 0, 0, 1, 0, 1, 1, 1, 0, 0, 1)
            wc.send(("chunk", rid, -1, meta, b"x", None))
            wc.send(("done", rid))

    threads = [threading.Thread(target=planner), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    try:
        firsts = [bytes(c.first_key) for c in scan._schedule()]
    finally:
        wp.send(("stop",))
        for t in threads:
            t.join(10)
        for r, w in never:
            os.close(r)
            os.close(w)
    assert firsts == [key(i) for i in range(stripes)]
    assert tally["received"] == stripes
    bound = parallel.QUEUED_STRIPES * scan.n + 1  # waiting stripes and one message's
    assert bound < 10 and tally["held"] <= bound, tally


def test_the_parent_stops_reading_a_boundary_planner_that_runs_ahead():
    """Stripes given by their boundaries alone (LMDB) are read ahead only up to
    QUEUED_BOUNDARIES waiting: before, the parent read the planner's whole walk at once and
    kept every stripe until the end, memory that grew with the store (~9,400 stripes at
    32 GiB: +5 MiB; a terabyte store ~250,000). Here 3,000 stripes in messages of 256, a
    worker taking 1 ms each."""
    import multiprocessing
    import threading
    import time

    from dsbackup.pipeline import parallel

    scan = ParallelScan("lmdb", "/nonexistent", ChunkSettings(4, 1 << 16, 1), 1)
    tally = {"received": 0, "sent": 0, "held": 0}
    wp, wc = multiprocessing.Pipe()
    pp, pc = multiprocessing.Pipe()
    scan.conns = [_CountingConn(wp, tally), _CountingConn(pp, tally)]
    scan._readers = [FrameReader(wp.fileno()), _CountingReader(pp.fileno(), tally)]
    never = [os.pipe() for _ in range(2)]  # the processes' sentinels: they never end

    class Proc:
        def __init__(self, fd: int) -> None:
            self.sentinel = fd

    scan.procs = [Proc(r) for r, _ in never]
    stripes, per_message = 3000, 256
    pad = b"p" * (READ_SIZE // per_message + 1)  # a message longer than one read

    def key(i: int) -> bytes:
        return b"/K%05d" % i + pad

    def planner() -> None:
        assert pc.recv()[0] == "plan"
        for lo in range(1, stripes, per_message):
            pc.send(("stripes", [key(i) for i in range(lo, min(lo + per_message, stripes))]))
        pc.send(("plan_done",))

    def worker() -> None:
        while (msg := wc.recv())[0] == "range":
            _, rid, start, _end, _freed, keys = msg
            assert keys is None
            time.sleep(0.001)
            first = start or key(0)
            meta = (1, first, first, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1)
            wc.send(("chunk", rid, -1, meta, b"x", None))
            wc.send(("done", rid))

    threads = [threading.Thread(target=planner), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    try:
        firsts = [bytes(c.first_key) for c in scan._schedule()]
    finally:
        wp.send(("stop",))
        for t in threads:
            t.join(30)
        for r, w in never:
            os.close(r)
            os.close(w)
    assert firsts == [key(i) for i in range(stripes)]
    assert tally["received"] == stripes
    bound = parallel.QUEUED_BOUNDARIES + per_message  # waiting stripes and one message's
    assert bound < stripes and tally["held"] <= bound, tally


def test_a_scan_abandoned_with_workers_blocked_in_send_stops_at_once(tmp_path):
    """A scan left early (an error, Ctrl-C, a worker killed) while the other workers are
    blocked writing chunk messages (with their key catalogs) into full pipes: they cannot read
    the "stop" sent to them, so the scan closes its ends and they end on EPIPE at once.
    Before, it waited 5 s for their exit, then SIGKILLed them (a Ctrl-C took 5 s)."""
    import time

    from tests.support.flatfs_files import random_names, write_store

    write_store(tmp_path / "s", random_names(40000), lambda n: n.encode() * 3)
    scan = ParallelScan("datastore", f"flatfs:{tmp_path / 's'}",
                        ChunkSettings(1500, 1 << 20, 1, (), True), 2)
    it = iter(scan)
    next(it)
    time.sleep(1.5)  # the workers fill their pipes with the chunks not read
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < 3.0
