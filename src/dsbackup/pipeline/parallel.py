"""Parallel scan, parent side.

A planner process walks the keys once (keys and sizes only) and streams natural chunk
boundaries that cut the key space into stripes of a few MiB; scan worker processes take the
stripes in key order and turn them into finished chunks; the parent writes the chunks in key
order. Because every stripe starts at a natural boundary, the chunks are exactly those of a
single sequential scan, whatever the number of workers.

Bounded memory: each worker owns SLOTS_PER_WORKER slots (MIN_SLOTS to that many where /dev/shm
is small: _slot_layout) of a shared memory file (each a little over chunk_max_bytes) and waits
when they are full, so at most SLOTS_PER_WORKER × workers chunks are in flight. Stripes are small (about STRIPE_CHUNKS chunks) so that a worker scanning ahead
of the stripe being written finishes its stripe without waiting. A worker that takes a new stripe while chunks of its previous one still wait
behind an earlier stripe has those chunks moved to a spill file, so it never waits on itself.

A store read by key list (flatfs) gets each stripe's keys from the planner's one listing and
hands them to the worker with the stripe, so no worker lists the store. The parent stops
reading the planner while QUEUED_STRIPES stripes per worker wait for one, so the planner waits
in send and at most that many stripes' keys (and one read's worth of messages) are held here.
Stripes given by their boundaries alone (LMDB) are read ahead up to QUEUED_BOUNDARIES: the
parent's memory does not grow with the store's size (a 32 GiB store has ~9,400 stripes).

A chunk's slot is freed once the consumer's call returns, unless the consumer holds the body
(BodyView.hold, for a consumer that reads the bytes after its call returns; the encrypted
archive writer no longer does: it encrypts a body before add_chunk returns); a held slot is freed when the consumer releases it, from any thread, which wakes the
loop if it is waiting for the workers.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import mmap
import os
import pickle
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dsbackup.errors import BackupError, Cancelled
from dsbackup.pipeline import channel, zygote
from dsbackup.pipeline.central import ChunkSettings, ScanStats
from dsbackup.pipeline.chunks import BodyView, ReadyChunk
from dsbackup.pipeline.frames import FrameReader
from dsbackup.pipeline.worker import worker_main

log = logging.getLogger(__name__)

# A stripe holds about STRIPE_CHUNKS chunks; a worker has room for the chunks of the stripe it
# scans plus those of finished stripes still waiting to be written.
STRIPE_CHUNKS = 4
SLOTS_PER_WORKER = 4 * STRIPE_CHUNKS
KEEP_SLOTS = 2 * STRIPE_CHUNKS  # chunks a worker may keep in its slots when it takes a stripe
FREE_BATCH = 4  # freed slots per message to a worker (each message wakes a process)
SNAPSHOT_RETRIES = 50
SPILLED = -2  # chunk moved from a worker's slot to the spill file
QUEUED_STRIPES = 2  # keyed stripes waiting per worker before the planner is left to wait
# stripes given by their boundaries alone (LMDB) waiting before the planner is left to wait:
# a few of its messages (256 stripes each), so the parent holds ~ a thousand stripes at most
# whatever the store's size, and the planner still runs ahead of the workers
QUEUED_BOUNDARIES = 1024
AHEAD = 1  # stripes handed to a busy worker before it asks, waiting in its pipe (see dispatch)
# a stripe handed ahead carries at most this many bytes of keys: its message waits unread in
# the worker's pipe, and one the pipe cannot hold blocks the loop in send while the busy
# worker may block sending its chunks (catalogs) to the loop: both wait for ever
AHEAD_KEY_BYTES = 16 << 10


@dataclass
class _Range:
    rid: int
    start: bytes
    end: bytes | None
    worker: int = -1
    done: bool = False
    chunks: deque = field(default_factory=deque)
    keys: list[bytes] | None = None  # the stripe's keys (keyed stores) until dispatched


SHM = "/dev/shm"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _free_bytes(d: str) -> int:
    try:
        st = os.statvfs(d)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _tmp_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


MIN_SLOTS = KEEP_SLOTS + STRIPE_CHUNKS  # the fewest a worker gets: the chunks it may keep + a stripe
# slot files taking more than this share of /dev/shm's free space are reserved there
SHM_LAZY_SHARE = 0.5


@dataclass(frozen=True)
class SlotLayout:
    """Where the workers' slot files go and how large they are."""

    where: str
    reserve: bool  # allocate them whole (fallocate): on a disk, or most of /dev/shm
    slots: int  # per worker, MIN_SLOTS to SLOTS_PER_WORKER
    workers: int  # may be fewer than asked when no directory has room for them all


def _slot_layout(workers: int, slot_size: int) -> SlotLayout:
    """Slot files for `workers` workers of up to SLOTS_PER_WORKER slots of `slot_size` bytes.

    The workers write chunks into maps of these files, and a map whose filesystem is full
    kills its writer with SIGBUS (with Docker's default /dev/shm of 64 MiB a backup with 6
    workers died, `backup worker 2 died (exit code -7)`): every slot can hold a chunk of the
    largest size at once, so the files must fit whole where they are. A worker needs no more
    than MIN_SLOTS to keep pace (the chunks it may keep while it takes a stripe, and a stripe),
    so a directory with room for fewer than SLOTS_PER_WORKER but at least MIN_SLOTS slots a
    worker is used with that many (2 workers in a 64 MiB /dev/shm, which once moved them to
    TMPDIR). In order: /dev/shm; TMPDIR, reserved, with a warning; fewer workers in the roomier
    of the two, with a warning; else BackupError saying so.

    Slot files in /dev/shm are sparse, their pages taken as chunks are written: two backups
    started together each saw the whole of a 64 MiB /dev/shm free, each sized its slots to
    fill it, and one died of SIGBUS once slow output (a pipe) let both fill them. Files that
    take more than SHM_LAZY_SHARE of what /dev/shm has free are reserved there too (as on a
    disk: the next backup sees the room they took); smaller ones stay sparse (a reservation
    costs ~0.6 ms of CPU a MiB)."""
    def fit(free: int) -> int:
        return min(SLOTS_PER_WORKER, free // (workers * slot_size))

    if os.path.isdir(SHM) and os.access(SHM, os.W_OK):
        shm_free = _free_bytes(SHM)
        if fit(shm_free) >= MIN_SLOTS:
            slots = fit(shm_free)
            tight = workers * slots * slot_size > shm_free * SHM_LAZY_SHARE
            return SlotLayout(SHM, tight, slots, workers)
        shm = f"{SHM} has {_mib(shm_free)} free"
    else:
        shm_free, shm = -1, f"{SHM} cannot be used"
    tmp = _tmp_dir()
    tmp_free = _free_bytes(tmp)
    needed = workers * MIN_SLOTS * slot_size
    if fit(tmp_free) >= MIN_SLOTS:
        log.warning("%s, less than the %s the chunk slots of %d backup workers need: they are "
                    "in %s instead (on its disk: give a larger %s, e.g. docker run --shm-size, "
                    "or fewer --workers)", shm, _mib(needed), workers, tmp, SHM)
        _remove_stale_slot_files(tmp)
        return SlotLayout(tmp, True, fit(tmp_free), workers)
    where, free = (SHM, shm_free) if shm_free >= tmp_free else (tmp, tmp_free)
    fewer = free // (MIN_SLOTS * slot_size)
    if fewer < 1:
        raise BackupError(
            f"no room for the chunk slots of {workers} backup workers ({_mib(needed)}), nor "
            f"of one ({_mib(MIN_SLOTS * slot_size)}): {shm}, {tmp} {_mib(tmp_free)}; give a "
            f"larger {SHM} (docker run --shm-size) or TMPDIR=/a/larger/disk")
    log.warning("%s and %s %s, less than the %s the chunk slots of %d backup workers need: "
                "scanning with %d worker%s instead, slots in %s (give a larger %s, e.g. docker "
                "run --shm-size, or TMPDIR=/a/larger/disk)", shm, tmp, _mib(tmp_free),
                _mib(needed), workers, fewer, "" if fewer == 1 else "s", where, SHM)
    if where != SHM:
        _remove_stale_slot_files(tmp)
    return SlotLayout(where, True, MIN_SLOTS, fewer)  # (all the room there is: reserved)


def _reserve(fd: int, size: int, where: str) -> None:
    """Allocate the slot file `fd` whole (its free space was checked; another process may
    have taken it since): a full disk is one clear error."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            os.ftruncate(fd, size)  # (no fallocate here: the space was there a moment ago)
            return
        raise BackupError(f"no room for the chunk slots of the backup workers in {where}: "
                          f"{exc.strerror}; give fewer --workers, a larger {SHM} or "
                          "TMPDIR=/a/larger/disk") from None


def _slot_files_base(d: str) -> str:
    """A new name in directory `d` for this backup's slot files (BASE.wN), as
    tempfile.mkstemp chooses one (created with O_EXCL, a random part, retried on a clash),
    then removed, without importing tempfile (start-up, docs/PERFORMANCE.md)."""
    for _ in range(100):
        base = os.path.join(d, f"dsbackup-slots-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            fd = os.open(base, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except FileExistsError:
            continue
        os.close(fd)
        os.unlink(base)
        return base
    raise FileExistsError(f"{d}: no free name for the backup's slot files")


def _fits_ahead(r: _Range) -> bool:
    """Whether stripe r's message is small enough to wait in a busy worker's pipe
    (AHEAD_KEY_BYTES): no keys, or a few short ones (a flatfs stripe's are sent with it)."""
    keys = r.keys
    return keys is None or (len(keys) <= AHEAD_KEY_BYTES // 32
                            and sum(map(len, keys)) + 8 * len(keys) <= AHEAD_KEY_BYTES)


def _remove_stale_slot_files(d: str = SHM) -> None:
    """Slot files of a backup killed before its workers started (normally they are unlinked
    as soon as every worker has mapped them)."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        if not name.startswith("dsbackup-slots-"):
            continue
        try:
            pid = int(name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(d, name))
            except OSError:
                pass
        except (ValueError, IndexError, PermissionError):
            continue


class ParallelScan:
    """Iterate the chunks of a store scanned by `workers` processes, in key order."""

    def __init__(self, kind: str, location: str, settings: ChunkSettings, workers: int,
                 *, cancel: threading.Event | None = None, stats: ScanStats | None = None,
                 consistent: bool = False,
                 data_version: Callable[[], int] | None = None) -> None:
        """`consistent`: every process must read one LMDB transaction (the ids they report
        equal). `data_version`: a store whose processes each pin a snapshot of their own
        (SQLite): a counter that changes with every commit (SqliteDatastore.data_version),
        read before they begin their snapshots and after; they are retried until it did
        not change in between, so all read one state."""
        self.kind, self.location, self.settings = kind, location, settings
        self.n = max(1, workers)
        self.cancel = cancel
        self.stats = stats if stats is not None else ScanStats()
        self.consistent = consistent or data_version is not None
        self._data_version = data_version
        self._version: int | None = None  # data_version before the snapshots were begun
        self.slot_size = settings.chunk_max_bytes + settings.chunk_max_bytes // 64 + 65536
        self.snapshot_id: int | None = None
        self._spill: Any = None
        self._wmaps: list[mmap.mmap] = []
        self._wviews: list[memoryview] = []
        self._wpaths: list[str] = []
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        # slots the consumer held and has released since (appended from its thread), and the
        # pipe that wakes the loop while it waits for the workers
        self._released: deque[tuple[int, int]] = deque()
        self._wake_lock = threading.Lock()
        self._waiting = False
        self._wake: tuple[int, int] | None = None
        self._poll: Any = None  # see _poller
        self._skipped = -1  # the process _recv leaves out of the poll object (see _recv)
        self._reported = False  # every process sent its stats: the scan is complete
        self._fds: dict[int, tuple[int, int]] = {}
        self._readers: list[FrameReader] = []  # every message from the processes, in bulk
        # per worker: its chunks waiting in its slots to be written (_spill_slots reads it)
        self._queued = [0] * self.n
        # a stripe ends at the first natural boundary after STRIPE_CHUNKS mean chunks' worth of
        # records, or of bytes when chunks are cut by size first
        self.stripe_records = STRIPE_CHUNKS * settings.chunk_size
        self.stripe_bytes = STRIPE_CHUNKS * min(settings.chunk_max_bytes,
                                                settings.target_chunk_bytes)

    # -- processes ---------------------------------------------------------------------------

    def _start(self) -> None:
        _remove_stale_slot_files()
        layout = _slot_layout(self.n, self.slot_size)
        if layout.workers < self.n:
            self.n = layout.workers
            self._queued = [0] * self.n
        where, reserve = layout.where, layout.reserve
        per = layout.slots * self.slot_size
        base = _slot_files_base(where)
        launch, pipe = self._launcher()
        for w in range(self.n + 1):  # the last one is the planner
            path: str | None = None
            if w < self.n:
                path = f"{base}.w{w}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                self._wpaths.append(path)
                try:
                    if reserve:  # (a full disk or /dev/shm is ENOSPC here, not SIGBUS later)
                        _reserve(fd, per, where)
                    else:
                        os.ftruncate(fd, per)
                    self._wmaps.append(mmap.mmap(fd, per))
                finally:
                    os.close(fd)
            parent, child = pipe()
            try:
                p = launch(child, "dsbackup-planner" if w == self.n else f"dsbackup-worker-{w}",
                           (path, layout.slots, self.slot_size, self.kind, self.location,
                            self.settings))
            finally:
                child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self._wviews = [memoryview(m) for m in self._wmaps]
        self._readers = [FrameReader(c.fileno()) for c in self.conns]
        log.debug("%d processes forked from %s", len(self.procs), self._origin())

    def _launcher(self) -> tuple[Callable[[Any, str, tuple], Any], Callable[[], tuple]]:
        """How the processes start, and the pipes they get: forks of the zygote the CLI
        started (zygote.py) on a channel.pipe(), else of the fork server (running already if
        the CLI prestarted it) on a multiprocessing Pipe (its end is pickled through the
        server). Only the second imports multiprocessing."""
        z = zygote.running()
        if z is not None and len(pickle.dumps(
                (self.kind, self.location, self.settings))) < zygote.MAX_REQUEST // 2:
            def from_zygote(conn: Any, name: str, args: tuple) -> Any:
                try:
                    return z.start_worker(conn, args, name)
                except zygote.ZygoteError as exc:
                    raise BackupError(f"cannot start backup worker {name}: {exc.strerror}"
                                      ) from None

            return from_zygote, channel.pipe
        from multiprocessing.connection import Pipe

        from dsbackup.pipeline import forkserver

        ctx = forkserver.context()

        def from_server(conn: Any, name: str, args: tuple) -> Any:
            p = ctx.Process(target=worker_main, daemon=True, name=name, args=(conn, *args))
            with forkserver.start_context():
                p.start()
            return p

        return from_server, Pipe

    def _origin(self) -> str:
        z = zygote.running()
        if self.procs and isinstance(self.procs[0], zygote.WorkerProcess) and z is not None:
            return f"zygote {z.pid}"
        from dsbackup.pipeline import forkserver

        return f"fork server {forkserver.server_pid()}"

    def _unlink_slot_files(self) -> None:
        for p in self._wpaths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self._wpaths = []

    def _stop(self) -> None:
        for c in [] if self._reported else self.conns:
            try:
                c.send(("stop",))
            except OSError:
                pass
        # a scan left early (an error, Ctrl-C, a worker killed): nothing more is read, and a
        # process blocked writing into its full pipe (a chunk with its catalog, the planner's
        # stripes) cannot read "stop": closing our ends gives it EPIPE and it ends now (it
        # waited 5 s for the kill below). After a whole scan only the planner's is closed.
        for c in self.conns if not self._reported else self.conns[self.n:]:
            if not c.closed:
                c.close()
        # after a whole scan every process has released the store and reported (its last
        # act before it exits: worker.py), so its exit (unmapping the store and the slots)
        # need not hold up the end of the backup: the zygote (or the fork server) reaps it
        deadline = time.monotonic() + 5
        for p in [] if self._reported else self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            if not c.closed:
                c.close()
        for p in self.procs:
            with contextlib.suppress(ValueError):  # a fork server's process still exiting
                p.close()

    def _cleanup(self) -> None:
        with self._wake_lock:
            if self._wake is not None:
                for fd in self._wake:
                    os.close(fd)
                self._wake = None
        if self._spill is not None:
            self._spill.close()
        for obj in self._wviews + self._wmaps:
            try:
                obj.release() if isinstance(obj, memoryview) else obj.close()
            except BufferError:  # a slice still lives in a caller's chunk; GC frees it
                pass
        self._unlink_slot_files()

    def _poller(self) -> Any:
        """One poll object over the pipes, the processes' sentinels and the wake pipe, made
        once (multiprocessing's wait() builds a selector and registers every object on each
        call): fd -> (what, worker)."""
        if self._poll is None:
            self._poll = select.poll()
            self._fds = {}
            for w, (c, p) in enumerate(zip(self.conns, self.procs)):
                self._fds[c.fileno()] = (0, w)
                self._fds[p.sentinel] = (1, w)
            if self._wake is not None:
                self._fds[self._wake[0]] = (2, -1)
            for fd in self._fds:
                self._poll.register(fd, select.POLLIN)
        return self._poll

    def _recv(self, timeout: float, before_sleep: Callable[[], None] | None = None,
              skip: int = -1) -> list[tuple[int, tuple]]:
        """The messages ready now, or within `timeout` seconds; `before_sleep` is called
        only when none is ready (so that what it sends can wait until the loop idles).
        Process `skip` is not read, nor its death seen (its pipe and sentinel are taken out
        of the poll object until a call without it)."""
        poll = self._poller()
        fds = self._fds
        if skip != self._skipped:
            if self._skipped >= 0:
                for fd in (self.conns[self._skipped].fileno(), self.procs[self._skipped].sentinel):
                    poll.register(fd, select.POLLIN)
            if skip >= 0:
                for fd in (self.conns[skip].fileno(), self.procs[skip].sentinel):
                    poll.unregister(fd)
            self._skipped = skip
        out = []
        self._waiting = True  # from here a release wakes this wait (see _release)
        try:
            ready = [] if self._released else poll.poll(0)
            if not ready and not self._released and timeout > 0:
                if before_sleep is not None:
                    before_sleep()
                ready = poll.poll(int(timeout * 1000))
        finally:
            self._waiting = False
        for fd, _ev in ready:
            what, w = fds[fd]
            if what == 2:
                try:
                    os.read(fd, 4096)
                except BlockingIOError:
                    pass
                continue
            if what == 1:
                if not self.conns[w].poll():
                    self._check_cancel()  # Ctrl-C reached the workers too: exit 130, not 2
                    raise BackupError(f"backup worker {w} died (exit code "
                                      f"{self.procs[w].exitcode})")
                continue
            try:
                out.extend((w, msg) for msg in self._readers[w].read())
            except (EOFError, OSError):  # OSError: ECONNRESET, it died with our data unread
                raise self._gone(w) from None
        for w, msg in out:
            if msg[0] == "error":
                log.debug("worker %d traceback:\n%s", w, msg[2])
                raise BackupError(f"backup worker {w} failed: {msg[1]}")
        return out

    def _send(self, w: int, msg: tuple) -> None:
        """Send to process w; one that is gone (killed) fails the scan naming it."""
        try:
            self.conns[w].send(msg)
        except OSError:  # EPIPE, ECONNRESET: its end of the pipe is closed
            raise self._gone(w) from None

    def _gone(self, w: int) -> Exception:
        """The error for process w, whose pipe was closed: Cancelled after a Ctrl-C (it
        reached the workers too: exit 130, not 2), else a BackupError with its exit code."""
        self._check_cancel()
        if w < len(self.procs):
            self.procs[w].join(1.0)  # its pipe closed as it exited: its code comes at once
            code = self.procs[w].exitcode
            if code == -signal.SIGBUS:  # its chunk slots' filesystem (or the store) shrank
                return BackupError(
                    f"backup worker {w} died of SIGBUS (a full {SHM} or TMPDIR under its "
                    "chunk slots, or a store file truncated while it was read)")
            if code:
                return BackupError(f"backup worker {w} died (exit code {code})")
        return BackupError(f"backup worker {w} exited unexpectedly")

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("backup cancelled")

    # -- snapshot ----------------------------------------------------------------------------

    def _await_ready(self) -> None:
        """Wait for every process's snapshot; for LMDB all must read the same transaction."""
        total = len(self.procs)
        for attempt in range(SNAPSHOT_RETRIES):
            ids: dict[int, Any] = {}
            while len(ids) < total:
                self._check_cancel()
                for w, msg in self._recv(0.2):
                    if msg[0] == "ready":
                        ids[w] = msg[1]
            distinct = set(ids.values())
            if not self.consistent or (len(distinct) == 1 and self._no_commit()):
                self.snapshot_id = next(iter(distinct))
                return
            if len(distinct) > 1:
                log.info("workers saw different snapshots %s", distinct)
            log.info("retrying the snapshots (%d)", attempt + 1)
            self._mark_version()
            for w in range(total):
                self._send(w, ("resnap",))
        raise BackupError(
            f"{self.location}: could not get one consistent snapshot for {total} processes "
            f"after {SNAPSHOT_RETRIES} tries (the store is being written too fast); retry, "
            "or use workers=1")

    def _mark_version(self) -> None:
        if self._data_version is not None:
            self._version = self._data_version()

    def _no_commit(self) -> bool:
        """No commit since _mark_version (always true without a data_version)."""
        if self._data_version is None:
            return True
        version = self._data_version()
        if version == self._version:
            return True
        log.info("a commit came while the processes began their snapshots")
        return False

    # -- main loop -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[ReadyChunk]:
        try:
            self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._mark_version()  # before any process begins its snapshot
            self._start()
            self._await_ready()
            self._unlink_slot_files()  # mapped everywhere now; nothing to leave behind
            yield from self._schedule()
            self._collect_stats()
        finally:
            self._stop()
            self._cleanup()

    def _schedule(self) -> Iterator[ReadyChunk]:
        planner = self.n
        ranges: deque[_Range] = deque()  # in key order; ranges[0] is being written
        by_id: dict[int, _Range] = {}  # the ranges not yet written (those in `ranges`)
        rids = itertools.count()
        unassigned: deque[_Range] = deque()
        idle = set(range(self.n))
        # per worker: the stripes handed to it and not done, in key order (it scans them in
        # that order: the first one now, the rest waiting in its pipe)
        taken: list[deque[int]] = [deque() for _ in range(self.n)]
        next_start: bytes | None = b""  # start of the stripe the planner has not closed yet
        planned = False

        def add_range(start: bytes, end: bytes | None, keys: list[bytes] | None) -> None:
            r = _Range(next(rids), start, end, keys=keys)
            by_id[r.rid] = r
            ranges.append(r)
            unassigned.append(r)

        def dispatch() -> None:
            while unassigned:
                w = self._next_worker(idle) if idle else None
                if w is None:
                    # no idle worker may take it: a busy one may get it ahead, so that it
                    # goes on from its stripe to the next without a round trip to this loop
                    w = None if idle or (planned and len(unassigned) <= self.n) or (
                        not _fits_ahead(unassigned[0])) else self._next_ahead(taken)
                    if w is None:
                        return  # the loop dispatches again after each message, and before it sleeps
                r = unassigned.popleft()
                idle.discard(w)
                taken[w].append(r.rid)
                self._spill_slots(w, ranges)
                r.worker = w
                # with the slots freed since the last message to it: one message, one wake-up
                self._send(w, ("range", r.rid, r.start, r.end, freed[w], r.keys))
                freed[w] = []
                r.keys = None

        freed: list[list[int]] = [[] for _ in range(self.n)]

        def send_freed(w: int) -> None:
            self._send(w, ("free", freed[w]))
            freed[w] = []

        def free(w: int, slot: int) -> None:
            freed[w].append(slot)
            if len(freed[w]) >= FREE_BATCH:
                send_freed(w)

        def flush() -> None:
            """Before the loop sleeps: a worker may be waiting for these, or for a stripe."""
            for w in range(self.n):
                if freed[w]:
                    send_freed(w)
            dispatch()

        released = self._released
        keyed = False  # the planner sends the stripes' keys: read it only while few wait
        queued_max = QUEUED_STRIPES * self.n
        self._send(planner, ("plan", self.stripe_records, self.stripe_bytes))
        while True:
            self._check_cancel()
            while ranges:
                head = ranges[0]
                while head.chunks:
                    w, slot, meta, inline, catalog = head.chunks.popleft()
                    if slot >= 0:
                        self._queued[w] -= 1
                        if (self._queued[w] == KEEP_SLOTS and unassigned
                                and len(taken[w]) <= AHEAD):
                            dispatch()  # a worker waiting for a stripe (_next_worker) may go on
                    held: list[bool] = []
                    yield self._ready_chunk(w, slot, meta, inline, catalog, held)
                    if slot >= 0 and not held:
                        free(w, slot)
                    while released:
                        free(*released.popleft())
                if not head.done:
                    break
                del by_id[ranges.popleft().rid]  # done and written: no message names it now
            if planned and not ranges:
                return
            while released:
                free(*released.popleft())
            # freed slots go out in batches while chunks keep coming, the rest (flush) only
            # before the loop sleeps: one message wakes a process
            pause = not planned and len(unassigned) >= (queued_max if keyed
                                                         else QUEUED_BOUNDARIES)
            for w, msg in self._recv(0.1, flush, planner if pause else -1):
                op = msg[0]
                if op == "chunk":
                    by_id[msg[1]].chunks.append((w, msg[2], msg[3], msg[4], msg[5]))
                    if msg[2] >= 0:
                        self._queued[w] += 1
                elif op == "done":
                    by_id[msg[1]].done = True
                    taken[w].popleft()
                    if not taken[w]:
                        idle.add(w)
                    elif sum(self._queued) < KEEP_SLOTS * self.n:
                        self._spill_slots(w, ranges)  # as if handed its next stripe now
                elif op == "stripes":
                    lists = msg[2] if len(msg) > 2 else [None] * len(msg[1])
                    keyed = keyed or len(msg) > 2
                    for key, keys in zip(msg[1], lists):
                        add_range(next_start, key, keys)
                        next_start = key
                elif op == "plan_done":
                    add_range(next_start, None, msg[1] if len(msg) > 1 else None)
                    planned = True
            dispatch()

    def _collect_stats(self) -> None:
        """Stop the processes and add up what their chunkers excluded."""
        for w in range(len(self.conns)):
            self._send(w, ("stop",))
        pending = set(range(len(self.conns)))
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for r in channel.wait([self.conns[w] for w in pending], 0.2):
                w = self.conns.index(r)
                try:
                    msgs = self._readers[w].read()
                except (EOFError, OSError):
                    raise BackupError(f"backup worker {w} exited before reporting") from None
                for msg in msgs:
                    self._stats_message(w, msg, pending)
        if pending:
            raise BackupError(f"backup workers {sorted(pending)} did not finish")
        self._reported = True

    def _stats_message(self, w: int, msg: tuple, pending: set[int]) -> None:
        if msg[0] == "error":
            raise BackupError(f"backup worker {w} failed: {msg[1]}")
        if msg[0] == "stats":
            if w < self.n:  # the planner frames nothing
                self.stats.excluded_records += msg[1]
                self.stats.excluded_bytes += msg[2]
                self.stats.add_unreadable(msg[5], msg[6])
                self.stats.worker_listing_passes += msg[7]
            else:
                self.stats.plan_listing_passes += msg[7]
            self.stats.worker_cpu_s += msg[3]
            self.stats.worker_peak_rss = max(self.stats.worker_peak_rss, msg[4])
            pending.discard(w)

    def _next_worker(self, idle: set[int]) -> int | None:
        """The idle worker to take the next stripe, or None to let them all wait.

        A worker holding more than KEEP_SLOTS unwritten chunks would have some spilled
        (_spill_slots) to make room for the stripe. That keeps it busy when the writer waits
        for a stripe being scanned; but when the writer itself is behind — KEEP_SLOTS chunks
        or more waiting per worker — spilling only adds a copy out and back to the one
        process every chunk goes through. Then such a worker waits for a stripe until the
        writer has caught up with its chunks (the loop dispatches after each message).
        """
        behind = sum(self._queued) >= KEEP_SLOTS * self.n
        for w in sorted(idle):
            if not behind or self._queued[w] <= KEEP_SLOTS:
                return w
        return None

    def _next_ahead(self, taken: list[deque[int]]) -> int | None:
        """The busy worker to be handed the next stripe before it has finished its own, or
        None. Each stripe means a message to this loop ("done") and one back ("range"); a
        worker that waited for the answer sat idle for that round trip, which is longer
        while this loop writes chunks (~2 ms a stripe, 5-7 % of a small-record backup's
        stream, docs/PERFORMANCE.md). So a worker may hold AHEAD stripes besides the one
        it scans — the one whose stripe started first, as it will probably finish first —
        but only while the writer is not behind and it holds at most KEEP_SLOTS chunks
        (its stripe then never makes _spill_slots move chunks it is still producing)."""
        if sum(self._queued) >= KEEP_SLOTS * self.n:
            return None
        best = None
        for w, rids in enumerate(taken):
            if (rids and len(rids) <= AHEAD and self._queued[w] <= KEEP_SLOTS
                    and (best is None or rids[0] < taken[best][0])):
                best = w
        return best

    def _spill_slots(self, w: int, ranges: deque[_Range]) -> None:
        """Make room in worker w's slots for the stripe it is about to take.

        A worker that takes a new stripe may still hold chunks of a finished stripe that waits
        behind an earlier one; if those kept all its slots, it would wait idle until they are
        written. It may keep up to KEEP_SLOTS of them (the rest of its slots are enough for
        a stripe); the latest chunks beyond that move to the spill file, which is on disk, so
        memory stays bounded.
        """
        if self._queued[w] <= KEEP_SLOTS:
            return  # (the common case: no walk over the ranges per stripe)
        held = []
        for r in ranges:
            if r.worker < 0:
                break  # ranges are handed out in key order: none later holds a chunk
            held.extend((r, j) for j, c in enumerate(r.chunks) if c[0] == w and c[1] >= 0)
        freed = []
        for r, j in reversed(held[KEEP_SLOTS:]):
            cw, slot, meta, _inline, catalog = r.chunks[j]
            if self._spill is None:
                import tempfile

                self._spill = tempfile.TemporaryFile(prefix="dsbackup-spill-")  # noqa: SIM115
            blen = meta[-1]
            off = slot * self.slot_size
            pos = self._spill.seek(0, os.SEEK_END)
            self._spill.write(self._wviews[w][off : off + blen])
            self._spill.flush()
            r.chunks[j] = (w, SPILLED, meta, (pos, blen), catalog)
            freed.append(slot)
            self._queued[w] -= 1
            self.stats.spilled_chunks += 1
        if freed:
            self._send(w, ("free", freed))

    def _release(self, w: int, slot: int) -> None:
        """A held slot is free again (called from the consumer's thread)."""
        self._released.append((w, slot))
        with self._wake_lock:
            if self._waiting and self._wake is not None:
                try:
                    os.write(self._wake[1], b"\0")
                except BlockingIOError:
                    pass  # the pipe is full: a wake-up is pending anyway

    def _hold(self, w: int, slot: int, held: list[bool]) -> Callable[[], None]:
        """BodyView.hold of a chunk in worker w's `slot`: freed by the function returned."""
        if held:
            raise RuntimeError("a chunk's slot is held twice")
        held.append(True)
        return lambda: self._release(w, slot)

    def _ready_chunk(self, w: int, slot: int, meta: tuple, inline: Any,
                     catalog: tuple | None, held: list[bool] | None = None) -> ReadyChunk:
        (records, first, last, kxxh, pxxh, raw, crc, size, input_len, clen, fxxh, codec, blen) = meta
        hold = None
        if slot >= 0:
            off = slot * self.slot_size
            data: Any = self._wviews[w][off : off + blen]
            if held is not None:
                hold = lambda: self._hold(w, slot, held)  # noqa: E731
        elif slot == SPILLED:
            pos, n = inline
            data = os.pread(self._spill.fileno(), n, pos)
        else:
            data = inline
        body = BodyView(data, crc, size, input_len, hold, clen, fxxh, codec)
        cbody = cxxh = None
        if catalog is not None:
            cdata, ccrc, csize, cat_len, cxxh = catalog
            cbody = BodyView(cdata, ccrc, csize, cat_len)
        return ReadyChunk(records, first, last, kxxh, pxxh, raw, body, cbody, cxxh)
