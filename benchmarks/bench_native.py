"""pytest-benchmark cases for each native stage: frame, compress, hash, inflate, LMDB scan.

Run: python -m pytest benchmarks/bench_native.py --benchmark-only
(DSBACKUP_BENCH_SCALE shrinks the data sets; benchmarks/native_ratios.py prints the ratios
against the baselines.)
"""

from __future__ import annotations

import native_data as nd
import pytest

from dsbackup._ext import checksum, compress, framing, lmdbscan


@pytest.fixture(scope="module")
def blocks():
    return nd.mixed_blocks(nd.scaled(64, 4))


@pytest.fixture(scope="module")
def small():
    return nd.small_records(nd.scaled(100_000, 1000))


@pytest.fixture(scope="module")
def lmdb_env(tmp_path_factory):
    return nd.make_lmdb(tmp_path_factory.mktemp("bench") / "env", nd.scaled(200_000, 1000))


def test_frame_small_records(benchmark, small):
    keys, values = small

    def run():
        ch = framing.Chunker(1000, 4 << 20)
        out = ch.add(keys, values)
        out.append(ch.finish())
        return out

    chunks = benchmark(run)
    assert sum(c.record_count for c in chunks) == len(keys)


@pytest.mark.parametrize("level", [1, 6])
def test_frame_compress_blocks(benchmark, blocks, level):
    keys = nd.block_keys(len(blocks))

    def run():
        ch = framing.Chunker(10**9, 4 << 20)
        out = ch.add_compress(keys, blocks, level)
        out.append(ch.finish_compress(level))
        return out

    chunks = benchmark(run)
    assert sum(c.record_count for c in chunks) == len(blocks)


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_compress_block(benchmark, blocks, level):
    body = benchmark(compress.deflate_body, blocks[0], level)
    assert body.input_len == len(blocks[0])


def test_hash_xxh3_64(benchmark, blocks):
    data = b"".join(blocks)
    assert benchmark(checksum.xxh3_64, data) == checksum.xxh3_64(data)


def test_crc32(benchmark, blocks):
    data = b"".join(blocks)
    assert benchmark(checksum.crc32, data) == checksum.crc32(data)


def test_inflate(benchmark, blocks):
    data = b"".join(blocks)
    body = compress.deflate_body(data, 1)
    out, _ = benchmark(compress.inflate_raw, body.data, body.size, body.size)
    assert len(out) == body.size


def test_scan_payload(benchmark, small):
    payload = framing.encode_records(*small)
    info = benchmark(framing.scan_payload, payload)
    assert info.record_count == len(small[0])


@pytest.mark.parametrize("level", [-1, 0, 1])
def test_lmdb_scan(benchmark, lmdb_env, level):
    def run():
        with lmdbscan.LmdbRangeScanner(str(lmdb_env), chunk_size=1000, chunk_max_bytes=4 << 20,
                                       level=level) as s:
            return sum(c.record_count for c in s)

    assert benchmark(run) == nd.scaled(200_000, 1000)
