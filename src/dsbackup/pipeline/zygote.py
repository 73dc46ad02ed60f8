"""The zygote: a fork of the CLI process that forks the parallel scan's worker processes.

The fork server (forkserver.py) is a new interpreter that imports the worker code before it
forks the first worker, and multiprocessing starts a resource tracker (one more interpreter)
with it: ~0.1-0.15 CPU-s and 0.1-0.25 s of wall time before the first stripe of every
parallel backup (docs/PERFORMANCE.md). `dsbackup backup` instead forks the zygote from itself
at start (``start``), after it has imported the worker code and before it reads a key, opens
a store or starts a thread; the workers are forks of the zygote, ready at once.

Never a fork of a process that holds an LMDB environment or a thread: ``start`` forks only
from a process with one thread (/proc/self/task) and no LMDB file open (/proc/self/fd);
anywhere else — a library caller, the scheduler daemon, ``DSBACKUP_ZYGOTE=0`` — no zygote
runs and the parallel scan uses the fork server.

Protocol (a SOCK_SEQPACKET socket pair; the zygote is single-threaded and serves one request
at a time):
  parent -> zygote: the pickled worker arguments, with two descriptors: the worker's end of
                    its pipe and the write end of its status pipe
  zygote -> parent: the worker's pid (a negative errno if fork failed)
  zygote -> status pipe: the worker's exit code (a signed 32-bit int; -N: killed by signal N)
                    once it has exited and been reaped, then closed; the read end is the
                    worker's sentinel (EOF without a code: the zygote died, code 255)
End of file on the socket (the parent is done, or gone — killed): the zygote SIGKILLs the
workers still running, reaps them and exits, so nothing outlives the backup.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading

from dsbackup.pipeline.channel import Channel, wait

log = logging.getLogger(__name__)

# imported before the fork, so that no worker imports them (forkserver.PRELOAD and what an
# LMDB worker imports when it opens its scanner)
PRELOAD = ("dsbackup.pipeline.worker", "dsbackup.datastores", "dsbackup._ext.lmdbscan")
MAX_REQUEST = 64 << 10  # pickled worker arguments; larger ones go through the fork server
_CODE = struct.Struct("i")
ENV = "DSBACKUP_ZYGOTE"  # "0": never start one (the fork server starts the workers)

_zygote: Zygote | None = None


class ZygoteError(OSError):
    """The zygote cannot start a worker (it died, or fork failed there)."""


class WorkerProcess:
    """A worker forked by the zygote, with the part of multiprocessing.Process's interface
    that the parallel scan uses (pid, sentinel, exitcode, is_alive, join, kill, close)."""

    def __init__(self, pid: int, sentinel: int, name: str) -> None:
        self.pid, self.sentinel, self.name = pid, sentinel, name
        self._code: int | None = None

    @property
    def exitcode(self) -> int | None:
        return self._poll(0)

    def _poll(self, timeout: float | None) -> int | None:
        if self._code is None and self.sentinel >= 0 and wait([self.sentinel], timeout):
            data = b""
            with contextlib.suppress(OSError):
                data = os.read(self.sentinel, _CODE.size)
            self._code = _CODE.unpack(data)[0] if len(data) == _CODE.size else 255
        return self._code

    def is_alive(self) -> bool:
        return self._poll(0) is None

    def join(self, timeout: float | None = None) -> None:
        self._poll(timeout)

    def kill(self) -> None:
        if self._poll(0) is None:  # not reaped yet: the pid is still the worker's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


class Zygote:
    """The parent's handle on a running zygote."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid, self.sock = pid, sock
        self._lock = threading.Lock()

    def start_worker(self, conn: Channel, args: tuple, name: str) -> WorkerProcess:
        """Fork a worker that runs ``worker_main(conn, *args)``. Raises ZygoteError."""
        payload = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            with self._lock:
                try:
                    socket.send_fds(self.sock, [payload], [conn.fileno(), w])
                    reply = self.sock.recv(_CODE.size)
                except OSError as exc:
                    raise ZygoteError(exc.errno, f"the worker zygote is gone: {exc}") from None
            if len(reply) != _CODE.size:
                raise ZygoteError(errno.ECHILD, "the worker zygote is gone")
            pid = _CODE.unpack(reply)[0]
            if pid < 0:
                raise ZygoteError(-pid, f"cannot fork a worker: {os.strerror(-pid)}")
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        return WorkerProcess(pid, r, name)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the socket (the zygote kills any worker left and exits) and reap it."""
        self.sock.close()
        # the zygote exits within milliseconds; SIGKILL only if it does not
        for delay in (timeout, None):
            try:
                if _wait_exit(self.pid, delay):
                    return
                os.kill(self.pid, signal.SIGKILL)
            except ChildProcessError:
                return


def _wait_exit(pid: int, timeout: float | None) -> bool:
    """Wait for child `pid` to exit, up to `timeout` seconds (None: for ever); whether it has.
    """
    if timeout is None:
        os.waitpid(pid, 0)
        return True
    try:  # a pidfd is readable once the child has exited: no 2 ms steps at the end of a backup
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3, or not Linux
        fd = -1
    if fd >= 0:
        try:
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            poll.poll(max(0, int(timeout * 1000)))
        finally:
            os.close(fd)
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    import time

    deadline = time.monotonic() + timeout
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


# -- when to start one ------------------------------------------------------------------------

def single_threaded() -> bool:
    """Whether this process has exactly one thread (native ones included); False where that
    cannot be told."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def holds_lmdb() -> bool:
    """Whether this process has an LMDB data or lock file open (an environment; it must not
    be inherited across fork). True where that cannot be told."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return True
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith((".mdb", "-lock")):
            return True
    return False


def wanted() -> bool:
    """Whether the zygote may be used at all: fork exists and ``DSBACKUP_ZYGOTE`` is not 0."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and os.environ.get(ENV) != "0"


def start() -> Zygote | None:
    """Fork the zygote now, if this process may be forked (one thread, no LMDB environment
    open) and none runs; the running one, or None (then the workers come from the fork
    server)."""
    global _zygote
    if _zygote is not None:
        return _zygote
    if not wanted():
        return None
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    if not single_threaded() or holds_lmdb():
        log.debug("no worker zygote: this process has threads or an LMDB environment open")
        return None
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for f in (sys.stdout, sys.stderr):  # nothing buffered may be written twice
        with contextlib.suppress(OSError, ValueError, AttributeError):
            f.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        parent_sock.close()
        child_sock.close()
        log.debug("no worker zygote: %s", exc)
        return None
    if pid == 0:  # the zygote
        code = 1
        try:
            parent_sock.close()
            _serve(child_sock)
            code = 0
        finally:
            os._exit(code)
    child_sock.close()
    _zygote = Zygote(pid, parent_sock)
    atexit.register(stop)
    log.debug("worker zygote %d started", pid)
    return _zygote


def running() -> Zygote | None:
    """The zygote started by ``start`` in this process, if it is still to be used."""
    if _zygote is not None and os.environ.get(ENV) != "0":
        return _zygote
    return None


def stop() -> None:
    """Stop the zygote, if one runs (at the end of the CLI command, and at exit)."""
    global _zygote
    z, _zygote = _zygote, None
    if z is not None:
        z.stop()


# -- the zygote itself -------------------------------------------------------------------------

def _serve(sock: socket.socket) -> None:
    """Fork a worker per request; report each one's exit code on its status pipe when it has
    been reaped; at end of file kill the workers left and return."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C and the like go to the parent: it stops us
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through wake_w
    status: dict[int, int] = {}  # running worker pid -> write end of its status pipe
    try:
        _loop(sock, wake_r, wake_w, status)
    finally:  # the parent is done or gone (or this loop failed): no worker outlives it
        for pid in status:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(status, block=True)


def _loop(sock: socket.socket, wake_r: int, wake_w: int, status: dict[int, int]) -> None:
    while True:
        ready = select.select([sock, wake_r], [], [])[0]
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 4096):
                    pass
            _reap(status, block=False)
        if sock in ready:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, 2)
            except OSError:
                msg, fds = b"", []
            if not msg or len(fds) != 2:  # end of file (or not our request)
                for fd in fds:
                    os.close(fd)
                return
            pid = _fork_worker(msg, fds, [sock.fileno(), wake_r, wake_w, *status.values()])
            os.close(fds[0])
            if pid > 0:
                status[pid] = fds[1]
            else:
                os.close(fds[1])
            try:
                sock.send(_CODE.pack(pid))
            except OSError:
                return


def _reap(status: dict[int, int], *, block: bool) -> None:
    while status:
        try:
            pid, st = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, _CODE.pack(os.waitstatus_to_exitcode(st)))
            os.close(fd)


def _fork_worker(msg: bytes, fds: list[int], close: list[int]) -> int:
    """Fork one worker on descriptors [conn, status]; its pid, or a negative errno."""
    try:
        pid = os.fork()
    except OSError as exc:
        return -(exc.errno or errno.EAGAIN)
    if pid:
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in the fork server's
        # workers; SIGPIPE stays ignored, as in any Python process
        for fd in [*close, fds[1]]:
            os.close(fd)
        from dsbackup.pipeline.worker import worker_main

        worker_main(Channel(fds[0]), *pickle.loads(msg))
        code = 0
    finally:
        os._exit(code)
