"""dsbackup._ext.lmdbwrite: payloads written natively equal py-lmdb's view, append and
non-append puts, map growth, malformed payloads write nothing, the double-open guard."""

from __future__ import annotations

import os
import random

import lmdb
import pytest
from lmdb_files import read_all, rss_file_mib

from dsbackup._ext import lmdbscan
from dsbackup._ext.framing import FramingError, decode_records, encode_records
from dsbackup._ext.lmdbwrite import LmdbKeyTooLong, LmdbPayloadWriter, PayloadError
from dsbackup.datastores import open_datastore
from dsbackup.errors import DatastoreError


def records(n: int, seed: int = 0, prefix: bytes = b"/r/") -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    recs = {prefix + rnd.randbytes(rnd.randrange(1, 40)): rnd.randbytes(rnd.choice([0, 7, 300, 5000]))
            for _ in range(n)}
    return sorted(recs.items())


def payloads_of(recs: list[tuple[bytes, bytes]], per: int) -> list[bytes]:
    return [encode_records([k for k, _ in recs[i:i + per]], [v for _, v in recs[i:i + per]])
            for i in range(0, len(recs), per)]


@pytest.mark.parametrize("writemap", [True, False])
def test_written_records_equal_the_payloads(tmp_path, writemap):
    recs = records(3000, seed=1)
    recs.append((b"/z/big", random.Random(2).randbytes(300_000)))  # overflow pages
    pls = payloads_of(recs, 97)
    with LmdbPayloadWriter(tmp_path / "env", writemap=writemap) as w:
        assert w.is_empty()
        n1, b1 = w.write(pls[:10])
        n2, b2 = w.write([memoryview(p) for p in pls[10:]])
        w.sync()
        assert not w.is_empty()
    assert n1 + n2 == len(recs)
    assert b1 + b2 == sum(len(k) + len(v) for k, v in recs)
    assert read_all(tmp_path / "env") == recs


@pytest.mark.parametrize("writemap", [True, False])
def test_non_append_and_out_of_order_payloads(tmp_path, writemap):
    recs = records(2000, seed=3)
    pls = payloads_of(recs, 50)
    shuffled = pls[:]
    random.Random(4).shuffle(shuffled)
    with LmdbPayloadWriter(tmp_path / "a", writemap=writemap) as w:
        first = sum(len(decode_records(p)[0]) for p in shuffled[:20])
        assert w.write(shuffled[:20], append=False)[0] == first
        # append=True with keys before the last key falls back to ordinary puts
        assert w.write(shuffled[20:], append=True)[0] == len(recs) - first
    assert read_all(tmp_path / "a") == recs


def test_overwrite_and_keep_existing(tmp_path):
    recs = records(500, seed=5)
    new = [(k, b"new" + v) for k, v in recs]
    with LmdbPayloadWriter(tmp_path / "e") as w:
        w.write(payloads_of(recs[::2], 40))
        # overwrite=False: existing keys keep their values and are not counted
        n, nbytes = w.write(payloads_of(new, 40), overwrite=False)
        assert n == len(recs[1::2])
        assert nbytes == sum(len(k) + len(v) for k, v in new[1::2])
    want = dict(recs[::2]) | dict(new[1::2])
    assert read_all(tmp_path / "e") == sorted(want.items())
    with LmdbPayloadWriter(tmp_path / "e") as w:
        assert w.write(payloads_of(new, 40), overwrite=True)[0] == len(recs)
    assert read_all(tmp_path / "e") == new


def test_map_grows_from_a_tiny_map(tmp_path):
    rnd = random.Random(6)
    recs = [(b"/m/%06d" % i, rnd.randbytes(20_000)) for i in range(600)]  # ~12 MB
    with LmdbPayloadWriter(tmp_path / "g", map_size=1 << 20) as w:
        assert w.write(payloads_of(recs, 100))[0] == len(recs)
        w.sync()
    assert read_all(tmp_path / "g") == recs
    env = lmdb.open(str(tmp_path / "g"), readonly=True, lock=False)
    assert env.info()["map_size"] > 12_000_000
    env.close()


def test_data_file_is_cut_back_to_the_pages_in_use(tmp_path):
    """Written through the map (MDB_WRITEMAP), LMDB extends data.mdb to the whole map size;
    close() truncates it to the pages in use, and the environment reopens and grows again."""
    recs = records(300, seed=8)
    with LmdbPayloadWriter(tmp_path / "t", map_size=1 << 30) as w:
        w.write(payloads_of(recs, 50))
        w.sync()
        assert (tmp_path / "t" / "data.mdb").stat().st_size == 1 << 30  # sparse, map-sized
    env = lmdb.open(str(tmp_path / "t"), readonly=True, lock=False)
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    env.close()
    assert (tmp_path / "t" / "data.mdb").stat().st_size == used < 1 << 20
    assert read_all(tmp_path / "t") == recs
    more = records(300, seed=9, prefix=b"/s/")
    with LmdbPayloadWriter(tmp_path / "t", map_size=1 << 30) as w:
        w.write(payloads_of(more, 50))
    assert read_all(tmp_path / "t") == sorted(recs + more)


def test_pages_written_through_the_map_leave_the_resident_set(tmp_path):
    """Values are copied into the file's pages through the map; after each commit those pages
    are unmapped again (they stay in the page cache), so writing 320 MiB does not leave
    320 MiB resident (without it: +320 MiB)."""
    value = random.Random(3).randbytes(256 << 10)
    with LmdbPayloadWriter(tmp_path / "r", map_size=1 << 30) as w:
        base = rss_file_mib()
        for b in range(5):
            keys = [b"/v/%08d" % (b * 1000 + i) for i in range(256)]
            w.write([encode_records(keys, [value] * 256)])
        grown = rss_file_mib() - base
    assert grown < 48, grown
    env = lmdb.open(str(tmp_path / "r"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.stat()["entries"] == 1280
        assert txn.get(b"/v/00004255") == value
    env.close()


def _mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of the file at ``path`` (/proc/self/smaps)."""
    name, total, current = os.path.realpath(path), 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
                current = parts[5] if len(parts) > 5 else None
            elif parts and parts[0] == "Rss:" and current == name:
                total += int(parts[1])
    return total


def test_pwrite_path_leaves_no_map_pages_resident(tmp_path):
    """Without MDB_WRITEMAP (restore's path) each transaction reads the pages it changes
    through LMDB's read-only map, and the kernel maps neighbouring cached pages with them;
    after each commit those are unmapped, so the resident set does not grow with the commits
    (before: ~6 KiB a commit, 516 KiB after these 80)."""
    value = random.Random(3).randbytes(256 << 10)
    with LmdbPayloadWriter(tmp_path / "r", writemap=False) as w:
        for b in range(80):
            keys = [b"/v/%08d" % (b * 100 + i) for i in range(4)]
            w.write([encode_records(keys, [value] * 4)])
        assert _mapped_kib(tmp_path / "r" / "data.mdb") <= 64
        assert not w.is_empty()
    assert len(read_all(tmp_path / "r")) == 320


def _page_fault_counter():
    """A perf software counter of this thread's page-fault exceptions (faults taken on behalf
    of a system call, like MADV_POPULATE_WRITE's, are not counted), or None."""
    import ctypes
    import platform
    import struct

    if platform.machine() != "x86_64":
        return None  # the system call number below is x86-64's
    libc = ctypes.CDLL(None, use_errno=True)
    attr = bytearray(128)  # struct perf_event_attr
    struct.pack_into("=IIQ", attr, 0, 1, len(attr), 2)  # SOFTWARE, size, SW_PAGE_FAULTS
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd = libc.syscall(298, buf, 0, -1, -1, 0)  # perf_event_open(attr, this thread, any cpu)
    return fd if fd >= 0 else None


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = os.uname().release.split(".")
    return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)


@pytest.mark.skipif(not _kernel_at_least(5, 14), reason="MADV_POPULATE_WRITE is Linux 5.14+")
def test_large_values_are_mapped_in_without_a_fault_per_page(tmp_path):
    """A large value's pages of the map are populated with one madvise call before the copy:
    writing 64 values of 256 KiB (4096 pages) takes far fewer page-fault exceptions than
    pages (2564 on the development VM without it, 82 with it)."""
    fd = _page_fault_counter()
    if fd is None:
        pytest.skip("perf_event_open is not allowed here")
    value = random.Random(4).randbytes(256 << 10)
    keys = [b"/v/%08d" % i for i in range(64)]
    payload = [encode_records(keys, [value] * 64)]
    try:
        with LmdbPayloadWriter(tmp_path / "r", map_size=1 << 28) as w:
            w.write([encode_records([b"/a"], [b"warm-up"])])
            before = int.from_bytes(os.read(fd, 8), "little")
            w.write(payload)
            faults = int.from_bytes(os.read(fd, 8), "little") - before
    finally:
        os.close(fd)
    assert faults < 1024, faults
    assert read_all(tmp_path / "r")[1:] == [(k, value) for k in keys]


def corruptions(good: bytes) -> dict[str, bytes]:
    n = int.from_bytes(good[8:16], "little")
    return {
        "truncated": good[:-3],
        "short header": good[:10],
        "magic": b"DSC2" + good[4:],
        "flags": good[:4] + b"\1" + good[5:],
        "count high": good[:8] + (n + 1).to_bytes(8, "little") + good[16:],
        "count low": good[:8] + (n - 1).to_bytes(8, "little") + good[16:],
        "op": good[:16] + b"\1" + good[17:],
        "trailing": good + b"\0",
    }


@pytest.mark.parametrize("kind", list(corruptions(encode_records([b"/a", b"/b"], [b"1", b"2"]))))
def test_malformed_payload_writes_nothing(tmp_path, kind):
    good = payloads_of(records(300, seed=7), 100)
    bad = corruptions(good[2])[kind]
    with LmdbPayloadWriter(tmp_path / "c") as w:
        with pytest.raises(PayloadError) as ei:
            w.write([good[0], good[1], bad])
        assert ei.value.index == 2
        assert w.is_empty()   # the earlier payloads of the call were not committed
    with pytest.raises(FramingError):
        decode_records(bad)   # the framing decoder agrees the payload is bad


def test_out_of_order_keys_inside_a_payload(tmp_path):
    p = bytearray(encode_records([b"/a", b"/b"], [b"", b""]))
    p[-1:] = b"a"  # second key becomes "/a" again
    with LmdbPayloadWriter(tmp_path / "o") as w, pytest.raises(PayloadError, match="greater"):
        w.write([bytes(p)])


def test_never_reads_past_the_buffer_and_agrees_with_decode_records(tmp_path):
    rnd = random.Random(8)
    good = payloads_of(records(40, seed=9), 40)[0]
    with LmdbPayloadWriter(tmp_path / "f", map_size=64 << 20) as w:
        for trial in range(400):
            b = bytearray(good[:rnd.randrange(len(good) + 1)] if trial % 2 else good)
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256) if b else 0
            data = bytes(b)  # an exact-size buffer: a read past it would be out of bounds
            try:
                decode_records(data)
                ok = True
            except FramingError:
                ok = False
            if ok:
                w.write([data])
            else:
                with pytest.raises(PayloadError):
                    w.write([data])


def test_key_longer_than_lmdb_allows(tmp_path):
    p = encode_records([b"/a", b"/b" + b"x" * 600], [b"1", b"2"])
    with LmdbPayloadWriter(tmp_path / "k") as w:
        with pytest.raises(LmdbKeyTooLong):
            w.write([p])
        assert w.is_empty()


def test_double_open_guard(tmp_path):
    path = tmp_path / "d"
    ds = open_datastore(f"lmdb:{path}")
    with pytest.raises(DatastoreError, match="already open"):
        LmdbPayloadWriter(path)
    ds.close()
    with LmdbPayloadWriter(path) as w:
        w.write(payloads_of(records(10), 10))
        with pytest.raises(DatastoreError, match="lmdbwrite"):
            open_datastore(f"lmdb:{path}")
        with pytest.raises(DatastoreError):
            LmdbPayloadWriter(path)
        with pytest.raises(lmdbscan.DoubleOpenError):
            lmdbscan.LmdbRangeScanner(path, chunk_size=100, chunk_max_bytes=1 << 20, level=1)
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.write([])
    with open_datastore(f"lmdb:{path}", readonly=True) as ds:  # released on close
        assert ds.approx_count() == 10


def test_scanner_holding_the_path_is_refused(tmp_path):
    path = tmp_path / "s"
    with LmdbPayloadWriter(path) as w:
        w.write(payloads_of(records(10), 10))
    scanner = lmdbscan.LmdbRangeScanner(path, chunk_size=100, chunk_max_bytes=1 << 20, level=1)
    try:
        with pytest.raises(lmdbscan.DoubleOpenError):
            LmdbPayloadWriter(path)
    finally:
        scanner.close()
    with LmdbPayloadWriter(path) as w:  # the failed open left no claim behind
        assert not w.is_empty()


def test_write_releases_the_gil(tmp_path):
    """While a large write runs in one thread, this thread keeps running Python: the largest
    gap between its ticks inside the call stays well below the call's length. A loaded
    machine may deschedule this thread for part of one call, so the best of three writes
    counts; a write that kept the GIL fails all three (one gap as long as the call)."""
    import threading
    import time

    value = random.Random(10).randbytes(1 << 18)
    pls = payloads_of([(b"/g/%06d" % i, value) for i in range(256)], 16)  # 64 MiB
    results = []
    for attempt in range(3):
        span = []
        with LmdbPayloadWriter(tmp_path / f"gil{attempt}", map_size=256 << 20) as w:
            def run(w=w, span=span):
                t0 = time.perf_counter()
                w.write(pls)
                span.extend((t0, time.perf_counter()))

            t = threading.Thread(target=run)
            ticks = []
            t.start()
            while t.is_alive():
                ticks.append(time.perf_counter())
            t.join()
        t0, t1 = span
        inside = [x for x in ticks if t0 <= x <= t1]
        gaps = [b - a for a, b in zip([t0, *inside], [*inside, t1])]
        assert t1 - t0 > 0.02
        results.append((max(gaps), t1 - t0))
        if max(gaps) < 0.5 * (t1 - t0):
            return
    raise AssertionError(f"the writing thread held the GIL (largest gap, call): {results}")


def test_failed_open_raises_instead_of_crashing(tmp_path):
    """An environment whose mdb_env_open failed has no map: closing it must not ask LMDB
    about it (that read freed memory: a segfault on a read-only or full target)."""
    import subprocess
    import sys

    (tmp_path / "t" / "data.mdb").mkdir(parents=True)  # the data file cannot be opened
    code = ("import sys\n"
            "from dsbackup._ext.lmdbwrite import LmdbPayloadWriter, LmdbWriteError\n"
            "try:\n"
            f"    LmdbPayloadWriter({str(tmp_path / 't')!r})\n"
            "except LmdbWriteError as exc:\n"
            "    print('refused:', exc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**__import__("os").environ,
                            "PYTHONPATH": str(__import__("pathlib").Path(__file__)
                                              .resolve().parents[2] / "src")})
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "refused:" in r.stdout
