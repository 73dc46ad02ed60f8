"""The S3 source's life cycle against a real moto server behind the tests' fault proxy: a
failed fetch is not kept (the next read of its bytes fetches them again, never the error
replayed nor a half-filled buffer), close() cancels the GETs queued and in flight (none after
it, its threads gone, in bounded time), the open's suffix GET goes through our signed GETs
(retried, its errors one line without a secret), and an object replaced at the key while it
is read is an integrity error, not a mix of two objects."""

from __future__ import annotations

import random
import threading
import time

import pytest
from s3server import SECRET_KEY, FaultProxy, Rule

from dsbackup.errors import ArchiveUnavailable, IntegrityError
from dsbackup.storage import s3 as s3mod
from dsbackup.storage import s3config
from dsbackup.storage.location import S3Location

SIZE = 3 << 20  # under one 8 MiB block: block 0 is bytes 0 .. SIZE-1


def _object(s3, size: int = SIZE, seed: int = 7) -> bytes:
    data = random.Random(seed).randbytes(size)
    s3.client.put_object(Bucket=s3.bucket, Key="obj.bin", Body=data)
    return data


@pytest.fixture
def proxy(s3, monkeypatch):
    """The fault proxy, and the client pointed at it (DSBACKUP_S3_RETRIES as set after)."""
    p = FaultProxy(("127.0.0.1", s3.server.port)).start()

    def use(retries: int = 0, **env: str) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        monkeypatch.setenv("DSBACKUP_S3_RETRIES", str(retries))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
        monkeypatch.setattr(s3config, "_tuned", False)
        s3mod.reset()

    p.use = use
    yield p
    p.stop()
    s3mod.reset()


def _source(s3) -> s3mod.S3Source:
    return s3mod.S3Source(S3Location(s3.bucket, "obj.bin"))


def _gets(proxy: FaultProxy) -> list[str]:
    return [h.get("range", "") for line, h in zip(proxy.seen, proxy.headers)
            if line.startswith("GET ")]


@pytest.mark.parametrize("fault", ["503", "cut", "416"])
def test_a_failed_block_is_fetched_again_by_the_next_read(s3, proxy, fault):
    data = _object(s3)
    proxy.use(retries=0)
    status = {"503": 503, "cut": None, "416": 416}[fault]
    proxy.rules = [Rule("GET", "/obj.bin", times=1, status=status, cut=fault == "cut",
                        range="bytes=0-")]
    src = _source(s3)
    try:
        err = IntegrityError if fault == "416" else ArchiveUnavailable
        with pytest.raises(err):
            src.read(1000, 5000)
        # the same block again: a new GET, the object's bytes (not the error, not the
        # half-filled buffer of the cut body)
        assert src.read(1000, 5000) == data[1000:6000]
        assert src.read(SIZE - (300 << 10), 100) == data[SIZE - (300 << 10):][:100]
        assert src.xxh3(7, 4000) == s3mod.xxh3_64(data[7:4007])
        assert _gets(proxy).count(f"bytes=0-{SIZE - 1}") == 2
    finally:
        src.close()
    assert proxy.rules[0].hits == 1


def test_a_failed_span_leaves_the_plan_and_its_reads_fetch_again(s3, proxy):
    data = _object(s3)
    proxy.use(retries=0, DSBACKUP_S3_GAP_KB="0")
    proxy.rules = [Rule("GET", "/obj.bin", times=1, status=503, range="bytes=200000-")]
    src = _source(s3)
    try:
        ranges = [(100000, 5000), (200000, 5000), (200000 + 5000, 3000), (400000, 5000)]
        src.plan(iter(ranges))
        assert src.read(100000, 5000) == data[100000:105000]
        try:  # its span failed: the read waiting on it gets the error, or it is gone already
            got = src.read(200000, 5000)
        except ArchiveUnavailable as exc:
            assert "HTTP 503" in str(exc)
        else:
            assert got == data[200000:205000]
        assert src.read(205000, 3000) == data[205000:208000]  # the failed span's: again
        assert src.read(400000, 5000) == data[400000:405000]
        assert all(sp.future.exception() is None for sp in src._plan._spans
                   if sp.future.done())
    finally:
        src.close()
    assert proxy.rules[0].hits == 1


def _slow_source(s3, proxy, delay: float) -> tuple[s3mod.S3Source, bytes]:
    """A source whose GETs after the open each wait `delay` s at the proxy."""
    data = _object(s3, 6 << 20)
    proxy.use(retries=3, DSBACKUP_S3_GAP_KB="0")
    proxy.rules = [Rule("GET", "/obj.bin", times=1, status=None, range="bytes=-"),
                   Rule("GET", "/obj.bin", times=10_000, status=None, delay=delay)]
    return _source(s3), data


def _s3get_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dsbackup-s3get")]


def test_close_cancels_the_planned_gets_in_flight_and_queued(s3, proxy):
    before = len(_s3get_threads())
    src, _ = _slow_source(s3, proxy, delay=3.0)
    ranges = [(off, 100 << 10) for off in range(0, 5 << 20, 120 << 10)]  # 43 spans
    src.plan(iter(ranges))
    failed: list[BaseException] = []

    def reader() -> None:
        try:
            src.read(*ranges[5])  # waits on a span queued behind those in flight
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            failed.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + 10
    while len(_gets(proxy)) < 1 + s3mod.settings().read_concurrency:  # the open + in flight
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    src.close()
    took = time.monotonic() - t0
    seen = len(proxy.seen)
    t.join(5)
    assert not t.is_alive()
    assert took < 1.5, took  # not the 3 s each GET in flight waits at the proxy
    assert len(failed) == 1 and isinstance(failed[0], ArchiveUnavailable), failed
    assert "closed while it was being read" in str(failed[0])
    deadline = time.monotonic() + 2
    while len(_s3get_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_s3get_threads()) == before  # the GETs' threads are gone
    time.sleep(1.0)
    assert len(proxy.seen) == seen  # nothing queued was sent after close()
    assert len(_gets(proxy)) <= 1 + s3mod.settings().read_concurrency  # the open + in flight
    with pytest.raises(ArchiveUnavailable, match="closed while it was being read"):
        src.read(*ranges[10])  # a read after close: an error, no new thread, no GET
    assert len(_s3get_threads()) == before and len(proxy.seen) == seen


def test_close_cancels_a_block_read_ahead_in_flight(s3, proxy, monkeypatch):
    monkeypatch.setattr(s3mod, "BLOCK", 1 << 20)  # 6 blocks: a read and its read-ahead
    before = len(_s3get_threads())
    src, data = _slow_source(s3, proxy, delay=3.0)
    proxy.rules[1].delay = 0.0
    assert src.read(0, 100) == data[:100]  # block 0, and blocks 1-3 read ahead
    proxy.rules[1].delay = 3.0
    src.read(1 << 20, 100)  # reads ahead blocks 4 and 5 (they wait at the proxy)
    time.sleep(0.3)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.5
    deadline = time.monotonic() + 2
    while len(_s3get_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_s3get_threads()) == before


def test_the_open_is_our_signed_get_retried_and_its_errors_are_one_line(s3, proxy):
    data = _object(s3)
    proxy.use(retries=1)
    proxy.rules = [Rule("GET", "/obj.bin", times=1, status=503, range="bytes=-")]
    src = _source(s3)
    try:
        assert src.size == SIZE and src.read(SIZE - 10, 10) == data[-10:]
        assert src._etag  # pinned: every later GET carries it
    finally:
        src.close()
    assert _gets(proxy)[:2] == [f"bytes=-{s3mod.TAIL_BYTES}"] * 2
    assert all("object_store" not in h.get("user-agent", "") for h in proxy.headers)
    proxy.use(retries=0)
    proxy.rules = [Rule("GET", "/obj.bin", times=1, status=503, range="bytes=-")]
    with pytest.raises(ArchiveUnavailable) as exc:
        _source(s3)
    assert str(exc.value) == f"s3://{s3.bucket}/obj.bin: GET failed: HTTP 503 SlowDown"
    proxy.rules = [Rule("GET", "/obj.bin", times=1, status=403, range="bytes=-",
                        body=f"<Error><Code>AccessDenied</Code><Message>key {SECRET_KEY}"
                             "</Message></Error>".encode())]
    with pytest.raises(ArchiveUnavailable) as exc:
        _source(s3)
    assert "access denied (HTTP 403 AccessDenied" in str(exc.value)
    assert SECRET_KEY not in str(exc.value)
    with pytest.raises(ArchiveUnavailable, match="no such archive"):
        s3mod.S3Source(S3Location(s3.bucket, "missing.bin"))


def test_an_object_replaced_while_it_is_read_is_an_integrity_error(s3, proxy):
    data = _object(s3)
    proxy.use(retries=2)
    src = _source(s3)
    try:
        assert src.read(SIZE - 100, 100) == data[-100:]  # the open's tail
        _object(s3, seed=8)  # another object of the same size at the key
        with pytest.raises(IntegrityError, match="the object changed while it was being read"):
            src.read(0, 100)
    finally:
        src.close()
    tags = [h.get("if-match") for line, h in zip(proxy.seen, proxy.headers)
            if line.startswith("GET ") and h.get("range", "").startswith("bytes=0-")]
    assert tags and None not in tags


def test_still_at_location_tells_the_object_opened_from_one_put_there_since(s3):
    """The check before an incremental's rename (engine/incremental.py): one HEAD, the same
    ETag and size as the object opened; another object PUT at the key, or none, is not it."""
    from dsbackup.storage import as_location
    from dsbackup.storage.s3 import S3Source

    s3.client.put_object(Bucket=s3.bucket, Key="n/a", Body=b"x" * 100000)
    src = S3Source(as_location(s3.url("n/a")))
    try:
        assert src.still_at_location()
        s3.client.put_object(Bucket=s3.bucket, Key="n/a", Body=b"y" * 100000)  # same size
        assert not src.still_at_location()
        s3.client.delete_object(Bucket=s3.bucket, Key="n/a")
        assert not src.still_at_location()
    finally:
        src.close()
