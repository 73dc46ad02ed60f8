"""The S3 source's sparse fetch (``S3Source.plan``, dsbackup.storage.s3plan) against a real
moto server: the planned ranges are fetched by ranged GETs of just them, coalesced below the
gap, pulled from the caller's iterator only as the fetch runs ahead (memory bounded), and a
read outside the plan still comes through the blocks."""

from __future__ import annotations

import random

import pytest
from s3server import FaultProxy, Rule

from dsbackup.errors import IntegrityError
from dsbackup.storage import s3 as s3mod
from dsbackup.storage import s3config, s3plan
from dsbackup.storage.location import S3Location


def _object(s3, size: int) -> bytes:
    data = random.Random(7).randbytes(size)
    s3.client.put_object(Bucket=s3.bucket, Key="obj.bin", Body=data)
    return data


def _counted(ranges: list[tuple[int, int]], pulled: list[int]):
    for r in ranges:
        pulled[0] += 1
        yield r


def test_planned_ranges_each_their_own_get_below_the_gap_and_pulled_lazily(s3, monkeypatch):
    monkeypatch.setenv("DSBACKUP_S3_GAP_KB", "0")
    data = _object(s3, 3 << 20)
    ranges = [(off, 100) for off in range(0, (3 << 20) - (300 << 10), 4096)]  # 691, not the tail
    src = s3mod.S3Source(S3Location(s3.bucket, "obj.bin"))
    try:
        pulled = [0]
        src.plan(_counted(ranges, pulled))
        ahead = s3plan.AHEAD_PER_THREAD * s3mod.settings().read_concurrency
        assert pulled[0] <= ahead + 1  # pulled as the fetch runs ahead, never the whole plan
        for off, n in ranges:
            assert src.read(off, n) == data[off:off + n]
            assert len(src._plan._spans) <= ahead
            assert src._plan._held <= s3plan.AHEAD_BYTES
        assert src._plan.gets == len(ranges) and src._plan.bytes == 100 * len(ranges)
        assert src._fetches == 0  # no block was fetched
    finally:
        src.close()


def test_adjacent_ranges_share_a_get_and_reads_outside_the_plan_use_blocks(s3):
    data = _object(s3, 3 << 20)
    ranges = [(off, 100) for off in range(0, (3 << 20) - (300 << 10), 4096)]
    src = s3mod.S3Source(S3Location(s3.bucket, "obj.bin"))
    try:
        src.plan(iter(ranges))
        for k, (off, n) in enumerate(ranges):
            if k == 300:  # a read the plan does not hold (an index page, say)
                assert src.read(5, 17) == data[5:22]
            assert src.read(off, n) == data[off:off + n]
            assert src.xxh3(off, n) == s3mod.xxh3_64(data[off:off + n])
        # 4 KiB apart, below the 64 KiB gap: one GET (its buffer a block's) for all of them
        assert src._plan.gets == 1 and src._fetches == 1
    finally:
        src.close()


def test_a_span_cut_or_refused_is_retried_and_a_shrunk_object_is_a_short_read(s3, monkeypatch):
    data = _object(s3, 2 << 20)
    proxy = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("DSBACKUP_S3_GAP_KB", "0")
        monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
        monkeypatch.setattr(s3config, "_tuned", False)
        s3mod.reset()
        proxy.rules = [Rule("GET", "/obj.bin", times=1, status=None, cut=True,
                            range="bytes=100000-"),
                       Rule("GET", "/obj.bin", times=1, status=503, range="bytes=200000-"),
                       Rule("GET", "/obj.bin", times=1, status=416, range="bytes=300000-"),
                       # the failed span is not kept: its read fetches again (a block)
                       Rule("GET", "/obj.bin", times=1, status=416, range="bytes=0-")]
        src = s3mod.S3Source(S3Location(s3.bucket, "obj.bin"))
        try:
            src.plan(iter([(100000, 5000), (200000, 5000), (300000, 5000)]))
            assert src.read(100000, 5000) == data[100000:105000]
            assert src.read(200000, 5000) == data[200000:205000]
            with pytest.raises(IntegrityError, match="short read at offset "):
                src.read(300000, 5000)
        finally:
            src.close()
        assert [r.hits for r in proxy.rules] == [1, 1, 1, 1]
    finally:
        proxy.stop()
        s3mod.reset()
