"""The native calls release the GIL: two threads inside large native calls overlap in time.

Overlap is measured on the calls' wall-clock intervals, which stays meaningful when other
processes load the machine: a call that kept the GIL would serialise the two threads (overlap
near 0), one that releases it lets both run inside the library at once. When the machine is
otherwise idle, the parallel wall time is also checked against one call (< 1.6x).
"""

import os
import random
import threading
import time

from dsbackup._ext import checksum, compress, framing


def _text(n: int) -> bytes:
    rnd = random.Random(3)
    words = [bytes(rnd.choice(b"etaoinshrdlu") for _ in range(rnd.randint(2, 8)))
             for _ in range(500)]
    return b" ".join(rnd.choices(words, k=n // 5))[:n]


def _run_pair(fn):
    """Run ``fn`` in two threads started together; return their (start, end) intervals."""
    barrier = threading.Barrier(2)
    spans = [None, None]

    def worker(i):
        barrier.wait()
        t0 = time.perf_counter()
        fn()
        spans[i] = (t0, time.perf_counter())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return spans


def _check_overlap(fn):
    fn()  # warm up
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    best_overlap, best_ratio = 0.0, float("inf")
    for _ in range(3):
        (a0, a1), (b0, b1) = _run_pair(fn)
        overlap = max(0.0, min(a1, b1) - max(a0, b0)) / min(a1 - a0, b1 - b0)
        best_overlap = max(best_overlap, overlap)
        best_ratio = min(best_ratio, (max(a1, b1) - min(a0, b0)) / single)
    assert best_overlap > 0.7, f"native calls did not overlap ({best_overlap:.2f})"
    if os.cpu_count() and os.cpu_count() >= 2 and os.getloadavg()[0] < 0.5:
        assert best_ratio < 1.6, f"two parallel calls took {best_ratio:.2f}x one call"


def test_deflate_body_releases_gil():
    data = _text(4 << 20) * 4
    _check_overlap(lambda: compress.deflate_body(data, 1))


def test_xxh3_and_crc_release_gil():
    data = os.urandom(1 << 20) * 256  # 256 MiB
    _check_overlap(lambda: checksum.xxh3_64(data))
    _check_overlap(lambda: checksum.crc32(data))


def test_inflate_releases_gil():
    body = compress.deflate_body(_text(4 << 20) * 8, 1).data
    _check_overlap(lambda: compress.inflate_raw(body, 64 << 20))


def test_chunker_add_compress_releases_gil():
    data = _text(8 << 20)
    keys = [b"/k/%06d" % i for i in range(128)]
    values = [data[i << 16:(i + 1) << 16] for i in range(128)]

    def run():
        ch = framing.Chunker(10**9, 4 << 20)
        ch.add_compress(keys, values, 1)
        ch.finish_compress(1)

    _check_overlap(run)


def test_scan_payload_releases_gil():
    keys = [b"/s/%08d" % i for i in range(300_000)]
    payload = framing.encode_records(keys, [b"v" * 100] * len(keys))
    _check_overlap(lambda: framing.scan_payload(payload))
