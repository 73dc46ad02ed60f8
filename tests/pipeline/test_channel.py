"""dsbackup.pipeline.channel: multiprocessing.connection's wire format without multiprocessing."""

from __future__ import annotations

import gc
import os
import socket
import threading
from multiprocessing.connection import Connection

import pytest

from dsbackup.pipeline import channel
from dsbackup.pipeline.frames import FrameReader

MESSAGES = [("ready", 7), ("chunk", 1, -1, (1, 2, 3), b"x" * 20_000, None), ("done", 3),
            ("stripes", [b"a" * 100] * 300), ()]


def _pair() -> tuple[channel.Channel, Connection]:
    a, b = socket.socketpair()
    return channel.Channel(a.detach()), Connection(b.detach())


def test_a_channel_and_a_multiprocessing_connection_read_each_other():
    ours, theirs = _pair()
    try:
        for msg in MESSAGES:  # small (one write) and > 16 KiB (header, then body) frames
            ours.send(msg)
            assert theirs.recv() == msg
            theirs.send(msg)
            assert ours.recv() == msg
        ours.send_bytes(b"raw")
        assert theirs.recv_bytes() == b"raw"
    finally:
        ours.close()
        theirs.close()


def test_the_parents_frame_reader_reads_a_channel():
    a, b = channel.pipe()
    try:
        for msg in MESSAGES:
            b.send(msg)
        reader, got = FrameReader(a.fileno()), []
        while len(got) < len(MESSAGES):
            got += reader.read()
        assert got == MESSAGES
    finally:
        a.close()
        b.close()


def test_poll_wait_and_end_of_file():
    a, b = channel.pipe()
    assert not a.poll()
    assert channel.wait([a, b], 0) == []
    b.send("x")
    assert a.poll(1.0)
    assert channel.wait([a, b.fileno()], 0) == [a]
    assert a.recv() == "x"
    threading.Timer(0.05, b.send, ("late",)).start()
    assert a.poll(None) and a.recv() == "late"
    b.close()
    assert b.closed and a.poll()  # the end of the pipe is ready to read, as with multiprocessing
    with pytest.raises(EOFError):
        a.recv()
    with pytest.raises(OSError):
        b.send("closed")
    a.close()
    a.close()  # twice: nothing


def test_a_message_cut_short_is_an_error_not_the_end():
    a, b = socket.socketpair()
    ours = channel.Channel(a.detach())
    b.sendall(b"\x00\x00\x00\x10" + b"12345")
    b.close()
    with pytest.raises(OSError, match="end of file during message"):
        ours.recv()
    ours.close()


def test_a_dropped_channel_closes_its_descriptor():
    a, b = channel.pipe()
    fd = a.fileno()
    del a
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)
    b.close()
