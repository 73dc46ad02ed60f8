"""dsbackup.pipeline.parallel: the spill policy, on a ParallelScan's bookkeeping alone."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import queue
import random
import threading
import time
from collections import deque

import pytest

from dsbackup.pipeline import parallel
from dsbackup.pipeline.central import ChunkSettings, ScanStats
from dsbackup.pipeline.frames import FrameReader
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
        meta = (1, b"k%d" % i, b"k%d" % i, 0, 0, 100, 0, 100, 100, 100, 0, 0, 100)
        ranges[1 + i * 2 // held].chunks.append((0, i, meta, None, None))
    scan._queued[0] = held  # as the loop counts them when their messages arrive
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
    assert scan._queued == [KEEP_SLOTS, 0]  # the spilled ones no longer count
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


def _lmdb_store(path, n: int = 3000) -> str:
    from dsbackup.datastores import open_datastore

    rng = random.Random(7)
    ds = open_datastore(f"lmdb:{path}")
    keys = [b"/k/%06d" % i for i in range(n)]
    ds.put_many(keys, [rng.randbytes(rng.randrange(100, 2000)) for _ in keys])
    location = ds.location
    ds.close()
    return location


def _scan(location: str) -> ParallelScan:
    # small chunks and slots: many chunks per worker, so held slots run out if not given back
    return ParallelScan("lmdb", location, ChunkSettings(20, 1 << 16, 1), 2, consistent=True)


def test_a_complete_scan_leaves_no_reader_on_the_store(tmp_path):
    """The scan no longer waits for its processes to exit once they have all reported: by
    then each has ended its read transaction and closed the store (worker.py), so no reader
    of theirs is left in the store's reader table, whether or not they have exited yet."""
    import lmdb

    location = _lmdb_store(tmp_path / "db")
    scan = _scan(location)
    chunks, pids = 0, set()
    for _ in scan:  # (their pids while they run: a process that has exited is closed)
        chunks += 1
        pids = pids or {str(p.pid) for p in scan.procs}
    assert chunks > 1 and scan.stats.worker_cpu_s > 0  # all three reported
    env = lmdb.open(location, readonly=True, lock=True)
    try:
        table = env.readers()
    finally:
        env.close()
    holders = {line.split()[0] for line in table.splitlines()[1:] if line.split()}
    # a released slot keeps no pid (LMDB clears it at mdb_env_close)
    assert not pids & holders, table


def test_held_slots_are_reused_only_once_released(tmp_path):
    """A consumer that holds every chunk's slot and releases it later from another thread
    (the encrypted writer's sealing thread): each body is intact until its release (no
    worker writes into a held slot), every slot comes back (the scan ends), and the chunks
    are those of a scan whose consumer holds nothing."""
    location = _lmdb_store(tmp_path / "db")
    expected = [(c.first_key, bytes(c.body.data)) for c in _scan(location)]
    assert len(expected) > 4 * parallel.SLOTS_PER_WORKER  # slots are reused many times
    held: queue.Queue = queue.Queue(maxsize=4)  # as many as the writer's SEAL_AHEAD
    seen: list[tuple[bytes, bytes]] = []
    broken: list[bytes] = []
    holds: list[int] = []

    def releaser() -> None:
        while (item := held.get()) is not None:
            first, body, copy, release = item
            time.sleep(0.002)  # the workers go on meanwhile
            if bytes(body.data) != copy:
                broken.append(first)
            release()

    t = threading.Thread(target=releaser)
    t.start()
    try:
        for c in _scan(location):
            copy = bytes(c.body.data)
            seen.append((c.first_key, copy))
            if c.body.hold is None:  # spilled to the file: bytes, no slot to hold
                assert isinstance(c.body.data, bytes)
                continue
            release = c.body.hold()
            with pytest.raises(RuntimeError):
                c.body.hold()  # one hold per chunk
            held.put((c.first_key, c.body, copy, release))
            holds.append(1)
    finally:
        held.put(None)
        t.join()
    assert not broken
    assert seen == expected
    assert len(holds) > len(seen) // 2


def test_a_release_wakes_the_loop_waiting_for_workers():
    """A slot released from another thread while the loop waits for the workers' messages
    ends the wait at once (the workers may be waiting for that slot), not at its timeout."""
    scan = ParallelScan("lmdb", "/nonexistent", ChunkSettings(10, 4096, 1), 1)
    parent, child = multiprocessing.Pipe()
    scan.conns = [parent]  # a worker that sends nothing
    scan._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        threading.Timer(0.2, scan._release, (0, 3)).start()
        t0 = time.perf_counter()
        assert scan._recv(30.0) == []
        assert time.perf_counter() - t0 < 10.0
        assert list(scan._released) == [(0, 3)]
        # released already: the loop does not wait
        t0 = time.perf_counter()
        assert scan._recv(30.0) == []
        assert time.perf_counter() - t0 < 10.0
    finally:
        scan._cleanup()
        parent.close()
        child.close()
    assert scan._wake is None
    scan._release(0, 4)  # after the scan ended: nothing is written anywhere


@pytest.mark.parametrize("how", ["died", "eof"])
def test_a_worker_gone_after_ctrl_c_is_a_cancellation(how):
    """Ctrl-C reaches the workers too: one that has exited (its pipe at EOF, or only its
    sentinel ready) once the cancel is set makes the scan Cancelled (exit 130), not a
    failed backup (exit 2); without the cancel it is a BackupError."""
    from dsbackup.errors import BackupError, Cancelled
    from dsbackup.pipeline import zygote

    for cancelled in (True, False):
        cancel = threading.Event()
        scan = ParallelScan("lmdb", "/nonexistent", ChunkSettings(10, 4096, 1), 1,
                            cancel=cancel)
        parent, child = multiprocessing.Pipe()
        r, w = os.pipe()
        scan.conns = [parent]
        scan.procs = [zygote.WorkerProcess(os.getpid(), r, "t")]
        scan._readers = [FrameReader(parent.fileno())]
        if how == "eof":
            child.close()
        else:
            os.write(w, zygote._CODE.pack(-2))
        if cancelled:
            cancel.set()
        try:
            with pytest.raises(Cancelled if cancelled else BackupError):
                scan._recv(5.0)
        finally:
            scan.procs[0].close()
            os.close(w)
            parent.close()
            child.close()


def test_a_worker_full_of_chunks_waits_for_a_stripe_only_while_the_writer_is_behind():
    """Spilling keeps a worker busy while the writer waits for another's stripe; when the
    writer is behind (KEEP_SLOTS chunks or more per worker waiting) it would only add work
    to the writer, so the worker holding many chunks waits instead."""
    scan = ParallelScan("lmdb", "/nonexistent", ChunkSettings(10, 4096, 1), 2,
                        stats=ScanStats())
    scan._queued = [KEEP_SLOTS + 1, 0]
    assert scan._next_worker({0, 1}) == 0  # the writer waits for worker 1: spill, go on
    assert scan._next_worker({0}) == 0
    scan._queued = [KEEP_SLOTS + 1, KEEP_SLOTS - 1]  # 2 x KEEP_SLOTS waiting: behind
    assert scan._next_worker({0}) is None
    assert scan._next_worker({0, 1}) == 1  # one that holds few takes it
    scan._queued = [KEEP_SLOTS, KEEP_SLOTS + 5]
    assert scan._next_worker({0, 1}) == 0


def test_a_busy_worker_gets_its_next_stripe_ahead_only_while_few_chunks_wait():
    """A worker may be handed one stripe beyond the one it scans (no idle round trip between
    stripes): the one whose stripe started first, never a third, never while the writer is
    behind or while it holds more than KEEP_SLOTS chunks (no spill of a running stripe)."""
    scan = ParallelScan("lmdb", "/nonexistent", ChunkSettings(10, 4096, 1), 2,
                        stats=ScanStats())
    assert scan._next_ahead([deque([3]), deque([2])]) == 1  # stripe 2 started first
    assert scan._next_ahead([deque([3]), deque([2, 4])]) == 0  # worker 1 has one ahead
    assert scan._next_ahead([deque([3, 5]), deque([2, 4])]) is None
    scan._queued = [0, KEEP_SLOTS + 1]
    assert scan._next_ahead([deque([3]), deque([2])]) == 0
    scan._queued = [KEEP_SLOTS + 1, KEEP_SLOTS - 1]  # 2 x KEEP_SLOTS waiting: behind
    assert scan._next_ahead([deque([3]), deque([2])]) is None


def test_a_worker_killed_mid_scan_fails_the_scan_naming_it(tmp_path):
    """A worker that dies (SIGKILL: no message) while the loop reads the others' messages in
    bulk and polls their pipes and sentinels: the scan raises BackupError naming it, at once,
    and leaves no process behind."""
    import signal

    from dsbackup.errors import BackupError

    scan = _scan(_lmdb_store(tmp_path / "db"))
    it = iter(scan)
    next(it)
    pids = [p.pid for p in scan.procs]
    os.kill(pids[0], signal.SIGKILL)
    t0 = time.perf_counter()
    with pytest.raises(BackupError, match=r"backup worker 0 (died|exited unexpectedly)"):
        for _ in it:
            pass
    assert time.perf_counter() - t0 < 10.0
    for pid in pids:  # every process was killed and reaped (the handles are closed)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_stripes_never_start_at_an_excluded_key(tmp_path):
    """The chunker never cuts at a key the exclude patterns leave out, so neither may a
    stripe start there: with exclude patterns the parallel scan's chunks (here ~160, ~40
    stripes, a tenth of the keys excluded) equal the central scan's. They once differed:
    the planner walk ignored the patterns."""
    from dsbackup.datastores import open_datastore
    from dsbackup.pipeline.central import central_chunks

    rng = random.Random(1)
    ds = open_datastore(f"lmdb:{tmp_path / 'db'}")
    keys = sorted({b"/k/%08d" % rng.randrange(10**8) for _ in range(3000)})
    ds.put_many(keys, [rng.randbytes(200) for _ in keys])
    location = ds.location
    ds.close()
    settings = ChunkSettings(16, 1 << 16, 1, ("/k/*3",), False)
    stats = ScanStats()
    par = [(bytes(c.first_key), bytes(c.last_key), c.record_count, bytes(c.body.data))
           for c in ParallelScan("lmdb", location, settings, 2, consistent=True, stats=stats)]
    ds = open_datastore(f"lmdb:{tmp_path / 'db'}", readonly=True)
    try:
        cstats = ScanStats()
        cen = [(bytes(c.first_key), bytes(c.last_key), c.record_count, bytes(c.body.data))
               for c in central_chunks(ds, settings, threads=1, stats=cstats)]
    finally:
        ds.close()
    assert len(cen) > 100
    assert par == cen
    assert stats.excluded_records == cstats.excluded_records > 200


def test_stripes_from_branch_page_hints_give_the_central_scans_chunks(tmp_path):
    """The LMDB planner cuts stripes from hints read off the branch pages (lmdbhints.pxi),
    each moved to the next natural boundary: on a three-level B-tree filled in random order,
    3 workers' chunks equal the central scan's, byte for byte."""
    from dsbackup._ext.lmdbscan import LmdbRangeScanner
    from dsbackup.datastores import open_datastore
    from dsbackup.pipeline.central import central_chunks

    rng = random.Random(2)
    ds = open_datastore(f"lmdb:{tmp_path / 'db'}")
    keys = list({b"/k/%010d" % rng.randrange(10**10) for _ in range(20000)})
    for i in range(0, len(keys), 1000):  # unsorted batches: half-full leaves, depth 3
        ds.put_many(keys[i:i + 1000], [rng.randbytes(rng.randrange(100, 300))
                                       for _ in keys[i:i + 1000]])
    location = ds.location
    ds.close()
    settings = ChunkSettings(40, 1 << 16, 1)
    with LmdbRangeScanner(str(tmp_path / "db"), chunk_size=40, chunk_max_bytes=1 << 16,
                          level=1) as s:
        assert len(s.stripe_hints(4 * 40, 1 << 20)) > 50  # the hint path, not the walk
    par = [(bytes(c.first_key), c.record_count, bytes(c.body.data))
           for c in ParallelScan("lmdb", location, settings, 3, consistent=True)]
    ds = open_datastore(f"lmdb:{tmp_path / 'db'}", readonly=True)
    try:
        cen = [(bytes(c.first_key), c.record_count, bytes(c.body.data))
               for c in central_chunks(ds, settings, threads=1, stats=ScanStats())]
    finally:
        ds.close()
    assert len(cen) > 300
    assert par == cen


_KEYED_BACKUP = """
import hashlib, os, sys
from dsbackup.datastores import open_datastore
from dsbackup.engine import backup
from dsbackup.engine.config import BackupConfig
backup.PARALLEL_MIN_BYTES = 0  # workers even for this small store
src = sys.argv[1]
ds = open_datastore("flatfs:" + src)
keys = sorted(b"/CIQ" + hashlib.sha256(b"%d" % i).hexdigest().upper().encode()[:52]
              for i in range(16000))
ds.put_many(keys, [os.urandom(20) for _ in keys])
ds.close()
cfg = BackupConfig(workers=2, chunk_size=1000, include_metadata=True)
meta = backup.BackupManager(cfg).create_backup("flatfs:" + src, sys.argv[2])
assert meta.statistics.mode == "parallel", meta.statistics.mode
"""


def test_a_keyed_stripe_is_not_handed_ahead_into_a_full_pipe(tmp_path, cli_env):
    """A flatfs stripe travels with its keys (here 4000 of them: ~250 KB, more than a pipe
    holds). Handed ahead to a busy worker, the loop blocked writing it while the worker, its
    catalogs filling its own pipe, blocked writing to the loop: the backup hung for ever.
    Such a stripe waits for its worker to ask; the backup ends."""
    import subprocess
    import sys

    out = tmp_path / "a.tar.gz"
    try:
        subprocess.run([sys.executable, "-c", _KEYED_BACKUP, str(tmp_path / "ff"), str(out)],
                       env=cli_env, check=True, timeout=60, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the parallel backup of a flatfs store hung (stripe handed ahead)")
    assert out.is_file()


def _commit_sqlite(path, ops) -> None:
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for k, v in ops:
            conn.execute("UPDATE datastore SET value = ? WHERE key = ?", (v, k))
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_sqlite_workers_read_one_state_while_the_store_is_written(tmp_path):
    """The processes of a parallel SQLite scan each read a stripe as one statement, each its
    own snapshot: a transaction committed meanwhile (the first and last keys rewritten
    together, as an application's one update) reached the archive half done, exit 0 (seen:
    `/a/gen` 347 and `/z/gen` 383 with a writer running). Each process now reads all its
    stripes in one read transaction, begun while no commit came (ParallelScan checks
    SQLite's data_version around them and retries)."""
    from dsbackup.datastores import open_datastore

    path = tmp_path / "s.db"
    ds = open_datastore(f"sqlite:{path}")
    keys = [b"/k/%05d" % i for i in range(3000)]
    ds.put_many(keys, [b"old-" + k for k in keys])
    ds.close()
    ds = open_datastore(f"sqlite:{path}", readonly=True)
    try:
        # one worker, ~150 chunks: it can run at most its slots ahead of the first chunk
        scan = ParallelScan("datastore", f"sqlite:{path}", ChunkSettings(20, 1 << 16, 0), 1,
                            data_version=ds.data_version)
        bodies = []
        for c in scan:
            if not bodies:
                _commit_sqlite(path, [(keys[0], b"new-first"), (keys[-1], b"new-last")])
            bodies.append(bytes(c.body.data))
    finally:
        ds.close()
    everything = b"".join(bodies)
    assert len(bodies) > 100
    assert b"new-" not in everything and everything.count(b"old-") == len(keys)


def test_sqlite_snapshots_are_retried_while_commits_come(monkeypatch, tmp_path):
    """A commit between the data_version read before the processes began their snapshots
    and the one after: they begin them again; when commits never stop, the scan fails with
    one clear error (not an archive of mixed states)."""
    from dsbackup.datastores import open_datastore
    from dsbackup.errors import BackupError

    path = tmp_path / "s.db"
    ds = open_datastore(f"sqlite:{path}")
    ds.put_many([b"/k/%04d" % i for i in range(200)], [b"v" * 50] * 200)
    ds.close()
    versions = iter([1, 2, 2, 2])  # read before, after: a commit in the first round only
    scan = ParallelScan("datastore", f"sqlite:{path}", ChunkSettings(20, 1 << 16, 0), 1,
                        data_version=lambda: next(versions))
    resnaps = []
    real_send = ParallelScan._send

    def send(self, w, msg):
        if msg[0] == "resnap":
            resnaps.append(w)
        real_send(self, w, msg)

    monkeypatch.setattr(ParallelScan, "_send", send)
    assert sum(c.record_count for c in scan) == 200
    assert resnaps == [0, 1]  # the worker and the planner, once
    monkeypatch.setattr(parallel, "SNAPSHOT_RETRIES", 3)
    counter = iter(range(100))
    scan = ParallelScan("datastore", f"sqlite:{path}", ChunkSettings(20, 1 << 16, 0), 1,
                        data_version=lambda: next(counter))
    with pytest.raises(BackupError, match="could not get one consistent snapshot"):
        list(scan)


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("unshare"),
                    reason="mounts a small /dev/shm in a mount namespace of its own (root)")
def test_a_small_dev_shm_does_not_kill_the_workers(tmp_path, cli_env):
    """The workers write their chunks into maps of slot files in /dev/shm, sized for the
    largest chunks (16 slots of ~2 MiB a worker) but filled as written: when /dev/shm was
    smaller (Docker's default is 64 MiB: 6 workers and more), a worker writing into a page
    the filesystem could not give died of SIGBUS and the backup failed, `backup worker 0
    died (exit code -7)`. The slots now go to TMPDIR, reserved, when /dev/shm has no room
    for all of them, with one warning line."""
    import subprocess
    import sys

    import lmdb

    store = tmp_path / "db"
    env = lmdb.open(str(store), map_size=1 << 30)
    rng = random.Random(3)
    with env.begin(write=True) as txn:
        for i in range(80_000):
            txn.put(b"/k/%08d" % i, rng.randbytes(500))
    env.close()
    out = tmp_path / "a.tar.gz"
    script = ('mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$0" -m dsbackup backup '
              '"$1" "$2" --workers 2')
    env = dict(cli_env, TMPDIR=str(tmp_path))
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable, f"lmdb:{store}",
                        str(out)], env=env, capture_output=True, text=True, timeout=120)
    if r.returncode and "unshare" in r.stderr:
        pytest.skip(f"no mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert "/dev/shm has 16.0 MiB free, less than the" in r.stderr
    assert f"they are in {tmp_path} instead" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dsbackup-slots-")]
    v = subprocess.run([sys.executable, "-m", "dsbackup", "verify", str(out)], env=cli_env,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stderr


def test_slot_layout_uses_what_each_directory_can_hold(monkeypatch, tmp_path):
    from dsbackup.errors import BackupError

    size = 2 << 20
    free = {parallel.SHM: 0, str(tmp_path): 0}
    monkeypatch.setattr(parallel, "_free_bytes", lambda d: free[d])
    monkeypatch.setattr(parallel, "_tmp_dir", lambda: str(tmp_path))
    L = parallel.SlotLayout
    free[parallel.SHM] = 900 << 20
    assert parallel._slot_layout(8, size) == L(parallel.SHM, False, 16, 8)
    # 64 MiB: 2 workers get 16 slots there, not TMPDIR (they used to need 32 slots' worth)
    # (more than half of it: reserved, so that a second backup sees the room they took)
    free[parallel.SHM] = 64 << 20
    assert parallel._slot_layout(2, size) == L(parallel.SHM, True, 16, 2)
    free[parallel.SHM] = 50 << 20
    assert parallel._slot_layout(2, size) == L(parallel.SHM, True, 12, 2)
    free[parallel.SHM] = 128 << 20  # (half of it: sparse)
    assert parallel._slot_layout(2, size) == L(parallel.SHM, False, 16, 2)
    free[parallel.SHM] = 50 << 20
    # no room for MIN_SLOTS a worker in /dev/shm: TMPDIR, reserved, as many as fit there
    free[str(tmp_path)] = 120 << 20
    assert parallel._slot_layout(4, size) == L(str(tmp_path), True, 15, 4)
    # room for neither: fewer workers in the roomier one rather than a refusal
    free[str(tmp_path)] = 10 << 20
    assert parallel._slot_layout(8, size) == L(parallel.SHM, True, 12, 2)
    free[parallel.SHM], free[str(tmp_path)] = 10 << 20, 30 << 20
    assert parallel._slot_layout(8, size) == L(str(tmp_path), True, 12, 1)
    free[str(tmp_path)] = 10 << 20
    with pytest.raises(BackupError, match=r"^no room for the chunk slots of 8 backup workers "
                       r"\(192\.0 MiB\), nor of one \(24\.0 MiB\): /dev/shm has 10\.0 MiB "
                       r"free, .* 10\.0 MiB; give a larger /dev/shm"):
        parallel._slot_layout(8, size)


def test_a_slot_file_the_disk_cannot_hold_is_one_clear_error(monkeypatch, tmp_path):
    """The free space was checked, but another process took it before the reservation."""
    from dsbackup.errors import BackupError

    def full(fd, offset, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(parallel.os, "posix_fallocate", full)
    fd = os.open(tmp_path / "slots", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(BackupError, match=rf"^no room for the chunk slots of the backup "
                                              rf"workers in {tmp_path}: No space left"):
            parallel._reserve(fd, 1 << 20, str(tmp_path))
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("unshare"),
                    reason="mounts small tmpfs in a mount namespace of its own (root)")
def test_a_small_dev_shm_is_sized_on_what_the_slots_can_hold(tmp_path, cli_env):
    """The check counted 16 slots a worker: 2 workers (67 MiB) in Docker's 64 MiB /dev/shm
    went to TMPDIR with a warning, and with TMPDIR small too a backup was refused. Now 2
    workers take 15 slots each in /dev/shm, quietly; with no room for 2 workers' fewest
    slots anywhere the backup scans with 1 worker and says so."""
    import subprocess
    import sys

    import lmdb

    store = tmp_path / "db"
    env = lmdb.open(str(store), map_size=1 << 30)
    rng = random.Random(4)
    with env.begin(write=True) as txn:  # 35 MB: scanned in parallel (PARALLEL_MIN_BYTES)
        for i in range(70_000):
            txn.put(b"/k/%08d" % i, rng.randbytes(500))
    env.close()
    small_tmp = tmp_path / "tmp"
    small_tmp.mkdir()
    script = ('mount -t tmpfs -o size=64m tmpfs /dev/shm && '
              '"$0" -m dsbackup backup "$1" "$2/a.tar.gz" --workers 2 && '
              'mount -t tmpfs -o size=20m tmpfs /dev/shm && '
              'mount -t tmpfs -o size=30m tmpfs "$3" && '
              'exec "$0" -m dsbackup backup "$1" "$2/b.tar.gz" --workers 2')
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable, f"lmdb:{store}",
                        str(tmp_path), str(small_tmp)], env=dict(cli_env, TMPDIR=str(small_tmp)),
                       capture_output=True, text=True, timeout=300)
    if r.returncode and "unshare" in r.stderr:
        pytest.skip(f"no mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "chunk slots" in ln]
    assert len(lines) == 1, r.stderr  # the 64 MiB run said nothing
    assert "scanning with 1 worker instead, slots in " + str(small_tmp) in lines[0]
    for name in ("a.tar.gz", "b.tar.gz"):
        v = subprocess.run([sys.executable, "-m", "dsbackup", "verify", str(tmp_path / name)],
                           env=cli_env, capture_output=True, text=True, timeout=120)
        assert v.returncode == 0, v.stderr

