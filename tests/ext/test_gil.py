"""The native calls release the GIL: another Python thread runs while one is inside them.

A ticker thread counts in a pure-Python loop while the main thread makes one native call.
The GIL's switch interval is set well above the call's length, so the interpreter never takes
the GIL from the main thread during the call: if the call kept the GIL the ticker cannot
advance (exactly 0 ticks, however loaded the machine); if it releases the GIL the ticker runs
inside it. Up to several calls are tried, since a loaded machine may not schedule the
ticker during any one call (the first call it advanced in settles it: each try waits out two
switch intervals). When the machine is otherwise idle, two threads repeating the
call are also checked against one (< 1.6x the wall time).
"""

import math
import os
import random
import sys
import threading
import time

from dsbackup._ext import checksum, compress, framing


def _text(n: int) -> bytes:
    rnd = random.Random(3)
    words = [bytes(rnd.choice(b"etaoinshrdlu") for _ in range(rnd.randint(2, 8)))
             for _ in range(500)]
    return b" ".join(rnd.choices(words, k=n // 5))[:n]


def _ticks_during(fn, tries: int = 8) -> int:
    """The ticks another Python thread made during one call of ``fn``: those of the first of
    up to ``tries`` calls in which it made any (0: in none)."""
    fn()  # warm up
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    state = {"n": 0, "run": True}

    def ticker():
        while state["run"]:
            state["n"] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(max(0.05, 5 * single))
    thread = threading.Thread(target=ticker)
    thread.start()
    best = 0
    try:
        for _ in range(tries):
            time.sleep(0.001)  # wait for the GIL afresh: a whole switch interval is ours
            c0 = state["n"]
            fn()
            best = max(best, state["n"] - c0)
            if best:
                break
    finally:
        state["run"] = False
        thread.join()
        sys.setswitchinterval(old)
    return best


def _run_pair(fn) -> float:
    """Wall time of ``fn`` run in two threads started together."""
    barrier = threading.Barrier(2)
    t = [0.0, 0.0]

    def worker(i):
        barrier.wait()
        t[i] = time.perf_counter()
        fn()
        t[i] = time.perf_counter() - t[i]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return max(t)


def _check_releases(call):
    ticks = _ticks_during(call)
    assert ticks > 0, "another thread made no progress during the native call"
    if not (os.cpu_count() and os.cpu_count() >= 2 and os.getloadavg()[0] < 0.5):
        return
    call()
    t0 = time.perf_counter()
    call()
    reps = max(1, math.ceil(0.3 / max(time.perf_counter() - t0, 1e-6)))

    def fn():
        for _ in range(reps):
            call()

    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    ratio = min(_run_pair(fn) for _ in range(3)) / single
    assert ratio < 1.6, f"two parallel calls took {ratio:.2f}x one call"


def test_deflate_body_releases_gil():
    data = _text(4 << 20) * 4
    _check_releases(lambda: compress.deflate_body(data, 1))


def test_zstd_compress_and_decode_release_gil():
    data = _text(4 << 20) * 4
    _check_releases(lambda: compress.deflate_body(data, 101))  # a zstd chunk body
    body = compress.deflate_body(data, 101)
    _check_releases(lambda: compress.zstd_decode(body.data, body.input_len, len(data), True))


def test_xxh3_and_crc_release_gil():
    data = os.urandom(1 << 20) * 256  # 256 MiB
    _check_releases(lambda: checksum.xxh3_64(data))
    _check_releases(lambda: checksum.crc32(data))


def test_inflate_releases_gil():
    body = compress.deflate_body(_text(4 << 20) * 8, 1).data
    _check_releases(lambda: compress.inflate_raw(body, 64 << 20))


def test_chunker_add_compress_releases_gil():
    data = _text(8 << 20)
    keys = [b"/k/%06d" % i for i in range(128)]
    values = [data[i << 16:(i + 1) << 16] for i in range(128)]

    def run():
        ch = framing.Chunker(10**9, 4 << 20)
        ch.add_compress(keys, values, 1)
        ch.finish_compress(1)

    _check_releases(run)


def test_scan_payload_releases_gil():
    keys = [b"/s/%08d" % i for i in range(300_000)]
    payload = framing.encode_records(keys, [b"v" * 100] * len(keys))

    def scans():
        # one scan takes ~5 ms, less than a loaded machine may take to wake the ticker
        # thread; eight in a row (the GIL taken back only between them) give it ~40 ms
        for _ in range(8):
            framing.scan_payload(payload)

    _check_releases(scans)
