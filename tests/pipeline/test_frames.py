"""dsbackup.pipeline.frames: Connection.send's messages read back in bulk."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from dsbackup.pipeline.frames import READ_SIZE, FrameReader


def test_reads_every_message_a_connection_sent_in_order():
    a, b = multiprocessing.Pipe()
    msgs = [("chunk", i, i % 16, (1, b"k%d" % i, b"z" * (i % 300)), None, None)
            for i in range(500)]
    msgs.append(("inline", b"x" * (3 * READ_SIZE + 17)))  # a message over several reads
    msgs.append(("done", 7))
    sender = threading.Thread(target=lambda: [b.send(m) for m in msgs])
    sender.start()
    reader = FrameReader(a.fileno())
    got: list = []
    reads = 0
    while len(got) < len(msgs):
        got.extend(reader.read())
        reads += 1
    sender.join()
    assert got == msgs
    assert not reader.pending()
    assert reads < len(msgs)  # several messages per read
    a.close()
    b.close()


def test_a_message_cut_short_by_the_peer_is_eof():
    r, w = os.pipe()
    reader = FrameReader(r)
    os.write(w, (100).to_bytes(4, "big") + b"partial")
    assert reader.read() == []
    assert reader.pending()
    os.close(w)
    with pytest.raises(EOFError):
        reader.read()
    os.close(r)


def test_the_long_length_form():
    """Connection.send frames messages over 2 GiB as -1 then a uint64 length; the same here
    (written by hand: a message that size is too big for a test)."""
    import pickle
    import struct

    r, w = os.pipe()
    reader = FrameReader(r)
    data = pickle.dumps(("stats", 1, 2))
    os.write(w, struct.pack("!i", -1) + struct.pack("!Q", len(data))[:3])
    assert reader.read() == []
    os.write(w, struct.pack("!Q", len(data))[3:] + data + struct.pack("!i", len(data)) + data)
    assert reader.read() == [("stats", 1, 2), ("stats", 1, 2)]
    os.close(w)
    os.close(r)
