"""Read a multiprocessing Connection's messages in bulk (the parallel backup's parent).

``Connection.recv`` makes two ``read`` calls per message (its length, then its bytes) and
several Python calls; a parallel backup's parent receives about one message per chunk from
each worker. ``FrameReader`` reads whatever the pipe holds with one ``read`` and unpickles
every complete message in it: the same framing (a big-endian int32 length, or -1 and a
uint64 length; then the pickle), so the sender keeps using ``Connection.send``. Once a
reader is in use, every message of that connection must be read through it.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

READ_SIZE = 1 << 16
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")


class FrameReader:
    """The messages of one connection (Unix: its file descriptor), read in bulk."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._need = 4  # bytes the next message needs in the buffer before it can be parsed

    def read(self) -> list[Any]:
        """Read once (blocks only if nothing is there: call it when the fd is readable) and
        return the messages complete now, possibly none. EOFError at the end of the pipe (or
        when the peer is gone)."""
        try:
            data = os.read(self.fd, max(READ_SIZE, self._need - len(self._buf)))
        except ConnectionResetError:  # the peer died with messages of ours unread
            raise EOFError from None
        if not data:
            raise EOFError
        buf = self._buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            n = _I32.unpack_from(buf, pos)[0]
            head = 4
            if n == -1:
                if end - pos < 12:
                    break
                n = _U64.unpack_from(buf, pos + 4)[0]
                head = 12
            if end - pos < head + n:
                self._need = head + n
                break
            with memoryview(buf) as view:
                out.append(pickle.loads(view[pos + head:pos + head + n]))
            pos += head + n
        else:
            self._need = 4
        if pos:
            del buf[:pos]
        return out

    def pending(self) -> bool:
        """Whether part of a message is buffered (a peer that exits now cut it short)."""
        return bool(self._buf)
