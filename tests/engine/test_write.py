"""engine/write.py: the one write loop, fed by hand-made chunk streams (real chunks, a real
archive writer): key order whatever order compressions finish in, references, cancel, and
framing errors as one-line BackupErrors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from dsbackup._ext.framing import Chunker, FramingError
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.manifest import ScanOutcome
from dsbackup.engine.plan import BackupPlan
from dsbackup.engine.write import write_archive
from dsbackup.errors import BackupError, Cancelled
from dsbackup.pipeline.chunks import compress_chunk


def chunks(n_records: int = 400):
    ch = Chunker(8, 1 << 20)
    keys = [b"/k/%05d" % i for i in range(n_records)]
    vals = [b"value %d " % i * 7 for i in range(n_records)]
    out = list(ch.add(keys, vals))
    last = ch.finish()
    return [compress_chunk(c, 1, False) for c in out + ([last] if last else [])]


class Stream:
    """Items as given; records what the loop asked of it."""

    def __init__(self, items, max_pending=2):
        self._items, self.max_pending = items, max_pending
        self.entered = self.left = False

    def __enter__(self):
        self.entered = True
        return self

    def __exit__(self, *exc):
        self.left = True

    def items(self):
        yield from self._items() if callable(self._items) else self._items

    def outcome(self):
        return ScanOutcome(mode="test", workers=1, excluded_records=0, excluded_bytes=0,
                           snapshot=None, extra={"probe": 1})


def plan(tmp_path, cancel=None, progress=None):
    return BackupPlan(path=tmp_path / "a.tar.gz", cfg=BackupConfig(workers=1),
                      created=datetime(2026, 1, 1, tzinfo=timezone.utc),
                      source={"uri": "test:store", "backend": "test"}, chunk_size=8,
                      chunk_max_bytes=1 << 20, node=None, cancel=cancel or threading.Event(),
                      t0=time.perf_counter(), progress=progress)


def test_compressions_finishing_out_of_order_are_written_in_key_order(tmp_path):
    cs = chunks()
    assert len(cs) > 10
    gates = [threading.Event() for _ in cs]

    def slow(i):
        gates[i].wait(5)
        return cs[i]

    def items():
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(slow, i) for i in range(len(cs))]
            for i in reversed(range(len(cs))):  # the last finishes first
                gates[i].set()
            yield from futs

    seen = []
    stream = Stream(items, max_pending=3)
    meta = write_archive(plan(tmp_path, progress=seen.append), stream)
    assert stream.entered and stream.left
    assert meta.total_keys == 400 and meta.chunks == len(cs)
    assert [p.records for p in seen] == sorted(p.records for p in seen)
    with ArchiveReader(meta.path) as r:
        assert [e.first_key for e in r.index.entries()] == [c.first_key for c in cs]
        assert r.summary["mode"] == "test" and r.summary["probe"] == 1
    assert verify_archive(meta.path, deep=True).ok


def test_finished_chunks_and_futures_mix(tmp_path):
    cs = chunks()
    items = []
    for i, c in enumerate(cs):
        if i % 2:
            f: Future = Future()
            f.set_result(c)
            items.append(f)
        else:
            items.append(c)
    meta = write_archive(plan(tmp_path), Stream(items))
    assert meta.total_keys == 400


def test_cancel_leaves_nothing_at_the_path(tmp_path):
    cancel = threading.Event()
    cs = chunks()

    def items():
        yield cs[0]
        cancel.set()
        yield from cs[1:]

    with pytest.raises(Cancelled):
        write_archive(plan(tmp_path, cancel=cancel), Stream(items))
    assert list(tmp_path.iterdir()) == []


def test_a_framing_error_is_a_backup_error_naming_the_source(tmp_path):
    def items():
        raise FramingError("key longer than the limit")
        yield  # pragma: no cover

    with pytest.raises(BackupError, match="^test:store: key longer"):
        write_archive(plan(tmp_path), Stream(items))
    assert list(tmp_path.iterdir()) == []
