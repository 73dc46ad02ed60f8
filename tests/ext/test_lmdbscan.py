"""dsbackup._ext.lmdbscan: LMDB range scans equal the Chunker, snapshots, the double-open guard."""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest

from dsbackup._ext import framing, lmdbscan

SRC = str(Path(__file__).resolve().parents[2] / "src")
CHUNK_SIZE = 40


def make_env(path, records, **kw):
    env = lmdb.open(str(path), map_size=1 << 30, **kw)
    with env.begin(write=True) as txn:
        for k, v in records:
            txn.put(k, v)
    env.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rnd = random.Random(7)
    keys = sorted({b"/r/%d/" % rnd.randrange(50) + rnd.randbytes(rnd.randrange(1, 30))
                   for _ in range(6000)})
    values = [rnd.randbytes(rnd.choice([0, 10, 100, 300, 5000])) for _ in keys]
    values[17] = rnd.randbytes(200_000)  # overflow pages, its own chunk
    path = tmp_path_factory.mktemp("lmdb") / "env"
    make_env(path, zip(keys, values))
    return path, keys, values


def chunker_output(keys, values, level=None):
    ch = framing.Chunker(CHUNK_SIZE, 64 << 10)
    if level is None:
        out = ch.add(keys, values)
        last = ch.finish()
    else:
        out = ch.add_compress(keys, values, level)
        last = ch.finish_compress(level)
    return out + ([last] if last is not None else [])


def scan(path, start=b"", end=None, level=-1, **kw):
    with lmdbscan.LmdbRangeScanner(str(path), start, end, chunk_size=CHUNK_SIZE,
                                   chunk_max_bytes=64 << 10, level=level, **kw) as s:
        txn = s.txn_id
        chunks = list(s)
        assert s.txn_id == txn
        assert s.next_chunk() is None
    return chunks


def test_full_scan_equals_chunker(dataset):
    path, keys, values = dataset
    got = scan(path, level=1)
    ref = chunker_output(keys, values, level=1)
    assert [c.payload for c in got] == [c.payload for c in ref]
    assert [c.body.data for c in got] == [c.body.data for c in ref]
    assert [c.keys_xxh3 for c in got] == [c.keys_xxh3 for c in ref]
    assert sum(c.record_count for c in got) == len(keys)


@pytest.mark.parametrize("level", [1, 0, 6])
def test_bodies_compressed_into_a_callers_buffer_equal_the_copies(dataset, level):
    """next_chunk(into=buf): the body is compressed straight into buf when it surely fits
    (a memoryview of buf), else made as bytes; the bytes are the same either way."""
    path, keys, values = dataset
    ref = scan(path, level=level)
    big = bytearray(80 << 10)  # room for any 64 KiB chunk's bound
    small = bytearray(8 << 10)  # too small for the larger chunks
    with lmdbscan.LmdbRangeScanner(str(path), chunk_size=CHUNK_SIZE, chunk_max_bytes=64 << 10,
                                   level=level) as s:
        got, placed = [], []
        for i in range(len(ref)):
            buf = big if i % 2 else small
            c = s.next_chunk(buf)
            data = c.body.data
            placed.append(isinstance(data, memoryview))
            if placed[-1]:
                assert data.obj is buf
                data = bytes(data)  # the next call reuses buf
            got.append((c.payload, data, c.body.crc32, c.body.size, c.body.input_len))
        assert s.next_chunk(big) is None
    assert got == [(c.payload, c.body.data, c.body.crc32, c.body.size, c.body.input_len)
                   for c in ref]
    assert sum(placed[1::2]) >= len(placed[1::2]) - 1  # all but the 200 KB value's chunk
    assert not all(placed[0::2])  # larger chunks do not fit the small buffer


@pytest.mark.parametrize("lo,hi", [(100, 2000), (0, 1), (-1, None), (3000, 3000)])
def test_range_equals_chunker(dataset, lo, hi):
    path, keys, values = dataset
    start = keys[lo]
    end = keys[hi] if hi is not None else None
    sel = slice(lo, hi)
    got = scan(path, start, end)
    assert [c.payload for c in got] == [c.payload for c in chunker_output(keys[sel], values[sel])]
    assert all(c.body is None for c in got)


def test_start_between_keys(dataset):
    path, keys, values = dataset
    start = keys[500] + b"\x00"  # not a key: the scan starts at the next one
    got = scan(path, start, keys[900])
    assert [c.payload for c in got] == [c.payload for c in chunker_output(keys[501:900],
                                                                          values[501:900])]


def test_split_at_natural_boundary(dataset):
    path, keys, values = dataset
    whole = scan(path, level=0)
    splits = [i for i, k in enumerate(keys) if framing.is_boundary(k, CHUNK_SIZE)]
    for i in (splits[1], splits[len(splits) // 2]):
        parts = scan(path, b"", keys[i], level=0) + scan(path, keys[i], None, level=0)
        assert [c.payload for c in parts] == [c.payload for c in whole]
        assert [c.body.data for c in parts] == [c.body.data for c in whole]


def test_exclude_catalog_subdir_and_named_db(tmp_path):
    recs = [(b"/keep/%03d" % i, b"v%d" % i) for i in range(50)]
    recs += [(b"/tmp/%03d" % i, b"x" * i) for i in range(50)]
    make_env(tmp_path / "flat.mdb", recs, subdir=False)
    m = framing.KeyMatcher(["/tmp/*"])
    with lmdbscan.LmdbRangeScanner(str(tmp_path / "flat.mdb"), chunk_size=10**6,
                                   chunk_max_bytes=1 << 20, level=6, exclude=m, catalog=True,
                                   subdir=False) as s:
        chunks = list(s)
        assert (s.excluded_records, s.records) == (50, 50)
    assert len(chunks) == 1 and chunks[0].catalog is not None
    assert framing.decode_records(chunks[0].payload)[0] == [k for k, _ in recs[:50]]

    env = lmdb.open(str(tmp_path / "named"), max_dbs=2, map_size=1 << 24)
    db = env.open_db(b"sub")
    with env.begin(write=True, db=db) as txn:
        for k, v in recs:
            txn.put(k, v)
    env.close()
    chunks = scan(tmp_path / "named", db_name=b"sub")
    assert framing.decode_records(chunks[0].payload)[0][0] == b"/keep/000"
    with pytest.raises(lmdbscan.LmdbError, match="cannot open database"):
        scan(tmp_path / "named", db_name=b"missing")


@pytest.mark.parametrize("catalog", [False, True])
def test_large_values_read_with_pread_equal_the_map(tmp_path, monkeypatch, catalog):
    """Values of 16 KiB and more are read with pread into the chunk (overflow pages): the
    chunks, catalogs and bodies equal the Chunker's and the map-reading scan's, excluded large
    values included (nothing reserved for them)."""
    rnd = random.Random(11)
    sizes = [16383, 16384, 16385, 70_000, 5, 300_000, 40_000, 0, 1 << 20]
    recs = sorted((b"/%s/%04d" % (b"skip" if i % 5 == 3 else b"keep", i),
                   rnd.randbytes(sizes[i % len(sizes)])) for i in range(60))
    make_env(tmp_path / "env", recs)
    keys, values = [k for k, _ in recs], [v for _, v in recs]
    kw = dict(chunk_size=7, chunk_max_bytes=2 << 20, level=1, catalog=catalog)

    def run(**extra):
        with lmdbscan.LmdbRangeScanner(str(tmp_path / "env"), **kw, **extra) as s:
            return s.preads_values, [(c.payload, c.catalog, c.body.data, c.keys_xxh3)
                                     for c in s]

    preads, got = run()
    assert preads
    ch = framing.Chunker(7, 2 << 20, catalog=catalog)
    ref = ch.add_compress(keys, values, 1) + [ch.finish_compress(1)]
    assert got == [(c.payload, c.catalog, c.body.data, c.keys_xxh3) for c in ref]
    m = framing.KeyMatcher(["/skip/*"])
    _, excl = run(exclude=m)
    monkeypatch.setenv("DSBACKUP_LMDB_MAP_READS", "1")
    preads, mapped = run(exclude=m)
    assert not preads and excl == mapped
    assert sum(len(framing.decode_records(p)[0]) for p, *_ in excl) == 48


def test_double_open_guard(dataset, tmp_path):
    path, _, _ = dataset
    kw = {"chunk_size": 10, "chunk_max_bytes": 1 << 20, "level": -1}
    s = lmdbscan.LmdbRangeScanner(str(path), **kw)
    with pytest.raises(lmdbscan.DoubleOpenError, match="already open"):
        lmdbscan.LmdbRangeScanner(str(path) + "/", **kw)
    with pytest.raises(lmdbscan.DoubleOpenError):
        lmdbscan.register_foreign_open(path / "data.mdb")
    s.close()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.next_chunk()
    lmdbscan.register_foreign_open(path)
    try:
        with pytest.raises(lmdbscan.DoubleOpenError, match="py-lmdb"):
            lmdbscan.LmdbRangeScanner(str(path), **kw)
    finally:
        lmdbscan.unregister_foreign_open(path)
    lmdbscan.LmdbRangeScanner(str(path), **kw).close()
    assert lmdbscan.open_environments() == []
    with pytest.raises(FileNotFoundError):
        lmdbscan.LmdbRangeScanner(str(tmp_path / "missing"), **kw)
    assert lmdbscan.open_environments() == []
    with pytest.raises(ValueError):
        lmdbscan.LmdbRangeScanner(str(path), chunk_size=10, chunk_max_bytes=100, level=10)


def test_scanner_refuses_use_after_fork(dataset):
    path, _, _ = dataset
    s = lmdbscan.LmdbRangeScanner(str(path), chunk_size=10, chunk_max_bytes=1 << 20, level=-1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            s.next_chunk()
        except RuntimeError:
            code = 0 if lmdbscan.open_environments() == [] else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.next_chunk() is not None  # the parent's scanner still works
    s.close()


WRITER = """
import lmdb, sys, time
env = lmdb.open(sys.argv[1], map_size=1 << 30)
deadline = time.time() + float(sys.argv[2])
i = 0
while time.time() < deadline:
    i += 1
    with env.begin(write=True) as txn:
        txn.put(b"/w/%08d" % i, b"x" * (i % 500))
        txn.put(b"/count", b"%d" % i)
print(i)
"""

def test_consistent_snapshots_while_writing(tmp_path):
    path = tmp_path / "live"
    make_env(path, [(b"/count", b"0")] + [(b"/base/%05d" % i, b"b" * 50) for i in range(3000)])
    env = {**os.environ, "PYTHONPATH": SRC}
    scanner = textwrap.dedent("""
        import json, sys, time
        from dsbackup._ext import framing, lmdbscan
        s = lmdbscan.LmdbRangeScanner(sys.argv[1], chunk_size=20, chunk_max_bytes=4096, level=1)
        txn = s.txn_id
        recs = {}
        for chunk in s:
            recs.update(zip(*framing.decode_records(chunk.payload)))
            time.sleep(0.001)
        same_txn = s.txn_id == txn
        s.close()
        count = int(recs[b"/count"])
        written = sorted(int(k[3:]) for k in recs if k.startswith(b"/w/"))
        print(json.dumps({"txn": txn, "same_txn": same_txn, "count": count,
                          "consistent": written == list(range(1, count + 1)),
                          "base": sum(k.startswith(b"/base/") for k in recs)}))
    """)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "3"], env=env,
                              stdout=subprocess.PIPE, text=True)
    results = []
    try:
        for _ in range(3):
            procs = [subprocess.Popen([sys.executable, "-c", scanner, str(path)], env=env,
                                      stdout=subprocess.PIPE, text=True) for _ in range(2)]
            for p in procs:
                out, _ = p.communicate(timeout=60)
                assert p.returncode == 0
                results.append(json.loads(out))
    finally:
        written = int(writer.communicate(timeout=60)[0])
    assert written > 0
    for r in results:
        assert r["same_txn"] and r["consistent"] and r["base"] == 3000, r
    assert any(r["count"] > 0 for r in results)


@pytest.mark.parametrize("sort", [True, False])
def test_scanning_large_values_keeps_the_map_out_of_the_resident_set(tmp_path, sort):
    """Values read with pread still fault in their first overflow page through the map (the
    cursor reads its header), and the kernel maps cached neighbours with it (fault-around):
    those pages are dropped every 64 MiB read, so a scan's resident set does not grow with the
    store (without it ~15-25% of the values read stayed mapped: 580 MiB per worker in a
    backup of a 4 GiB store written in random key order)."""
    from dsbackup import datasets

    path = tmp_path / "db"
    datasets.write_lmdb(str(path), datasets.iter_blocks(1600, seed=7), sort=sort)
    code = (
        "import sys\n"
        "from dsbackup._ext.lmdbscan import LmdbRangeScanner\n"
        "from lmdb_files import rss_file_mib\n"
        "s = LmdbRangeScanner(sys.argv[1], chunk_size=4, chunk_max_bytes=2 << 20, level=-1)\n"
        "assert s.preads_values\n"
        "base = peak = rss_file_mib()\n"
        "while s.next_chunk() is not None:\n"
        "    peak = max(peak, rss_file_mib())\n"
        "print(peak - base)\n")
    support = str(Path(__file__).resolve().parents[1] / "support")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([support, *sys.path]))
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env,
                       capture_output=True, text=True, check=True)
    assert float(r.stdout) < 36, r.stdout
