"""The pipe between the CLI and a worker the zygote forks, without multiprocessing.

``multiprocessing.connection`` imports ``multiprocessing`` (its context, reducers, util:
``subprocess``, ``tempfile``, ``shutil``, ``random`` ...), ~8-12 ms of a backup's start-up
before the zygote forks (docs/PERFORMANCE.md, "Start-up of a backup"). A worker forked by the
zygote needs only what ``Channel`` has: ``multiprocessing.connection.Connection``'s methods
that the parallel scan uses (send, recv, poll, fileno, close, closed) on the same socket
pair and the same framing (a big-endian int32 length, or -1 and a uint64 length; then the
pickle), so that pipeline/frames.py reads either. Workers started by the fork server still
use multiprocessing's own (their ends are pickled through it).
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import struct
from collections.abc import Iterable
from typing import Any

_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")


class Channel:
    """One end of a pipe: ``multiprocessing.connection.Connection``'s interface (the part
    this package uses) and wire format, on a file descriptor it owns."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def __del__(self) -> None:  # as Connection's: an end dropped unclosed is closed
        if getattr(self, "_fd", None) is not None:
            self.close()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def fileno(self) -> int:
        return self._open()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _open(self) -> int:
        if self._fd is None:
            raise OSError("handle is closed")
        return self._fd

    def send(self, obj: Any) -> None:
        self.send_bytes(pickle.dumps(obj))

    def send_bytes(self, buf: bytes) -> None:
        """A message of ``buf``, framed as Connection._send_bytes frames it."""
        n = len(buf)
        if n > 0x7FFFFFFF:
            self._write(_I32.pack(-1) + _U64.pack(n))
            self._write(buf)
        elif n > 16384:
            self._write(_I32.pack(n))
            self._write(buf)
        else:
            self._write(_I32.pack(n) + buf)

    def _write(self, buf: bytes) -> None:
        fd = self._open()
        with memoryview(buf) as view:
            while view:
                view = view[os.write(fd, view):]

    def recv(self) -> Any:
        """The next message; EOFError at the end of the pipe."""
        return pickle.loads(self.recv_bytes())

    def recv_bytes(self) -> bytes:
        size = _I32.unpack(self._read(4))[0]
        if size == -1:
            size = _U64.unpack(self._read(8))[0]
        return self._read(size)

    def _read(self, size: int) -> bytes:
        fd = self._open()
        parts = []
        left = size
        while left:
            data = os.read(fd, left)
            if not data:
                if left == size:
                    raise EOFError
                raise OSError("got end of file during message")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or the end of the pipe) is there to read, waiting up to
        ``timeout`` seconds (None: until one is)."""
        return bool(wait([self], timeout))


def pipe() -> tuple[Channel, Channel]:
    """Two connected ends, as ``multiprocessing.Pipe()`` makes them (a Unix socket pair)."""
    a, b = socket.socketpair()
    return Channel(a.detach()), Channel(b.detach())


def wait(objects: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """The objects (file descriptors, or objects with ``fileno()``) ready to read — data,
    end of file or an error — within ``timeout`` seconds (None: wait for one), as
    ``multiprocessing.connection.wait`` tells them on Linux."""
    poll = select.poll()
    by_fd: dict[int, list[Any]] = {}
    for obj in objects:
        fd = obj if isinstance(obj, int) else obj.fileno()
        by_fd.setdefault(fd, []).append(obj)
        poll.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    # retried on EINTR by poll itself (PEP 475), with the time left
    return [obj for fd, _ev in poll.poll(ms) for obj in by_fd[fd]]
