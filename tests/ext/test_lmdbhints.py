"""dsbackup._ext.lmdbscan: stripe hints read off LMDB's branch pages, and their snap to a
natural boundary (the planner of a parallel backup without a walk of every key)."""

import ast
import random

import lmdb
import pytest

from dsbackup._ext import lmdbscan
from dsbackup._ext.framing import is_boundary
from dsbackup.pipeline.central import ChunkSettings
from dsbackup.pipeline.sources import LmdbSource

CHUNK_SIZE = 50


def make_env(path, records, **kw):
    env = lmdb.open(str(path), map_size=1 << 30, **kw)
    with env.begin(write=True) as txn:
        for k, v in records:
            txn.put(k, v)
    env.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """20,000 records of ~200 bytes put in random order (half-full leaves, a B-tree three
    levels deep: the hints come from two levels of branch pages)."""
    rnd = random.Random(3)
    keys = list({b"/k/%010d" % rnd.randrange(10**10) for _ in range(20000)})
    path = tmp_path_factory.mktemp("hints") / "env"
    make_env(path, ((k, rnd.randbytes(rnd.randrange(100, 300))) for k in keys))
    env = lmdb.open(str(path), readonly=True)
    depth = env.stat()["depth"]
    env.close()
    return path, sorted(keys), depth


def scanner(path, **kw):
    return lmdbscan.LmdbRangeScanner(str(path), chunk_size=CHUNK_SIZE, chunk_max_bytes=1 << 20,
                                     level=1, **kw)


def test_hints_are_leaf_keys_in_order_and_snap_to_the_next_natural_boundary(store):
    path, keys, depth = store
    assert depth >= 3
    with scanner(path) as s:
        hints = s.stripe_hints(4 * CHUNK_SIZE, 64 << 10)
        assert hints is not None and len(hints) > 20
        assert hints == sorted(set(hints))
        known = set(keys)
        assert all(h in known for h in hints)  # a leaf's first key
        for h in hints[::5] + [b"", keys[-1], b"/z"]:
            i = next((j for j, k in enumerate(keys) if k >= h), len(keys))
            want = next((k for k in keys[i:] if is_boundary(k, CHUNK_SIZE)), None)
            assert s.snap(h) == want


def test_the_hints_space_stripes_by_records_or_bytes(store):
    path, keys, _ = store
    with scanner(path) as s:
        few = s.stripe_hints(4 * CHUNK_SIZE, 1 << 30)
        many = s.stripe_hints(1, 1 << 30)
        by_bytes = s.stripe_hints(1 << 30, 64 << 10)
    # every leaf but the first of each branch page, then about 200 records apart, and 16 pages
    assert len(many) > 5 * len(few)
    assert 20000 // 400 < len(few) < 20000 // 100
    assert len(many) > 8 * len(by_bytes) > 0


def test_lmdb_source_stripes_are_increasing_natural_boundaries(store):
    path, keys, _ = store
    src = LmdbSource(str(path), ChunkSettings(CHUNK_SIZE, 1 << 20, 1))
    try:
        ends = list(src.stripes(4 * CHUNK_SIZE, 1 << 30))
    finally:
        src.close()
    assert len(ends) > 40
    assert ends == sorted(set(ends))
    assert all(is_boundary(k, CHUNK_SIZE) for k in ends)
    assert ends[0] > keys[0]


@pytest.mark.parametrize("case", ["overflow values", "one leaf", "named database"])
def test_layouts_not_read_by_hints_fall_back_to_the_walk(tmp_path, case):
    rnd = random.Random(5)
    keys = sorted({b"/k/%06d" % rnd.randrange(10**6) for _ in range(300)})
    kw = {}
    if case == "overflow values":
        records = [(k, rnd.randbytes(5000)) for k in keys]
    elif case == "one leaf":
        records = [(k, b"v") for k in keys[:20]]
    else:
        records = [(k, rnd.randbytes(200)) for k in keys]
    path = tmp_path / "env"
    if case == "named database":
        env = lmdb.open(str(path), map_size=1 << 30, max_dbs=1)
        db = env.open_db(b"blocks")
        with env.begin(write=True, db=db) as txn:
            for k, v in records:
                txn.put(k, v)
        env.close()
        kw = {"db_name": b"blocks"}
    else:
        make_env(path, records)
    with scanner(path, **kw) as s:
        assert s.stripe_hints(4, 4096) is None
    settings = ChunkSettings(4, 1 << 20, 1)
    src = LmdbSource(str(path), settings) if not kw else None
    if src is not None:  # the walk still cuts stripes at natural boundaries
        try:
            ends = list(src.stripes(8, 1 << 30))
        finally:
            src.close()
        assert ends == sorted(set(ends)) and all(is_boundary(k, 4) for k in ends)
        assert len(ends) > 3 or case == "one leaf"


def test_an_empty_store_has_no_hints(tmp_path):
    make_env(tmp_path / "env", [])
    with scanner(tmp_path / "env") as s:
        assert s.stripe_hints(4, 4096) == []
        assert s.snap(b"") is None


@pytest.mark.parametrize("pgno", [0, 1, 3, 1 << 34, (1 << 64) - 1])
def test_a_damaged_leaf_page_number_gives_no_hints_and_no_crash(store, tmp_path, pgno):
    """A damaged leaf page number must not send the branch walk outside the file (the
    pages are read through a map of the file's own, not located from a page header). In a child process, so that a crash fails
    the test instead of ending the run."""
    import os
    import shutil
    import struct
    import subprocess
    import sys

    path, keys, _ = store
    dam = tmp_path / "env"
    shutil.copytree(path, dam)
    data = bytearray((dam / "data.mdb").read_bytes())
    for off in range(2 * 4096, len(data), 4096):  # every leaf page's mp_pgno
        if struct.unpack_from("<H", data, off + 10)[0] & 0x02:
            struct.pack_into("<Q", data, off, pgno)
    (dam / "data.mdb").write_bytes(bytes(data))
    code = (
        "import sys\n"
        "from dsbackup._ext import lmdbscan\n"
        "from dsbackup._ext.framing import is_boundary\n"
        "s = lmdbscan.LmdbRangeScanner(sys.argv[1], chunk_size=50, chunk_max_bytes=1 << 20,"
        " level=1)\n"
        "print(s.stripe_hints(200, 1 << 30))\n"
        "n = 0\n"
        "while (k := s.next_stripe_end(200, 1 << 30)) is not None:\n"
        "    assert is_boundary(k, 50)\n"
        "    n += 1\n"
        "print(n)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code, str(dam)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    hints, n = r.stdout.splitlines()
    # the branch walk reads no leaf page: its hints are the intact tree's, or none at all
    hints = ast.literal_eval(hints)
    assert hints is None or (hints == sorted(set(hints)) and set(hints) <= set(keys))
    assert int(n) > 40


PAGE = 4096


def _meta_off(data):
    """The offset of the newest MDB_meta (after the page header of page 0 or 1)."""
    import struct

    return max((struct.unpack_from("<Q", data, i * PAGE + 16 + 128)[0], i * PAGE + 16)
               for i in range(2))[1]


def _first_leaf_path(data):
    """The page numbers from the main database's root down to its first leaf."""
    import struct

    pg = struct.unpack_from("<Q", data, _meta_off(data) + 24 + 48 + 40)[0]
    path = [pg]
    while not struct.unpack_from("<H", data, pg * PAGE + 10)[0] & 0x02:
        p0 = struct.unpack_from("<H", data, pg * PAGE + 16)[0]
        lo, hi, fl = struct.unpack_from("<HHH", data, pg * PAGE + p0)
        pg = lo | hi << 16 | fl << 32
        path.append(pg)
    return path


def _hints_in_a_child(path):
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dsbackup._ext import lmdbscan\n"
        "s = lmdbscan.LmdbRangeScanner(sys.argv[1], chunk_size=50, chunk_max_bytes=1 << 20,"
        " level=1)\n"
        "print(s.stripe_hints(200, 1 << 30))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-c", code, str(path)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_leaf_page_number_moving_the_base_onto_a_forged_meta_is_no_crash(store, tmp_path):
    """The first leaf's page number said where the map began; one that points the base at
    a page of the file holding a copy of the snapshot's meta (same txnid) passed the
    file-size check relative to that base, and the root it named lay past the file's end
    in the (larger) map: SIGBUS, the whole backup gone. The pages are now read through a map of our own."""
    import shutil
    import struct

    path, keys, _ = store
    dam = tmp_path / "env"
    shutil.copytree(path, dam)
    env = lmdb.open(str(dam), map_size=1 << 30)
    with env.begin(write=True) as txn:  # the first leaf copied to a page near the end
        txn.put(b"/a", b"x")
    env.close()
    data = bytearray((dam / "data.mdb").read_bytes())
    n = len(data) // PAGE
    first = _first_leaf_path(data)
    leaf, fake = first[-1], 100
    assert fake not in first and leaf - fake > 2
    meta = bytearray(data[_meta_off(data):_meta_off(data) + 136])
    struct.pack_into("<Q", meta, 120, n - 1)  # last page: the file's last
    struct.pack_into("<Q", meta, 24 + 48 + 40, n - 1)  # root: past the end from that base
    data[fake * PAGE:fake * PAGE + 16] = struct.pack("<QHHHH", 0, 0, 0x08, 0, 0)
    data[fake * PAGE + 16:fake * PAGE + 16 + len(meta)] = meta
    struct.pack_into("<Q", data, leaf * PAGE, leaf - fake)  # the map "begins" at page 100
    (dam / "data.mdb").write_bytes(bytes(data))
    r = _hints_in_a_child(dam)
    assert r.returncode == 0, (r.returncode, r.stderr)
    hints = ast.literal_eval(r.stdout)  # the real tree's, the forged meta never read
    assert len(hints) > 20 and hints == sorted(set(hints)) and set(hints) <= set(keys)


def _branch_page(pgno, child, n):
    """A branch page ``pgno`` of ``n`` nodes all pointing at page ``child``."""
    import struct

    page = bytearray(PAGE)
    upper = PAGE
    for j in range(n):
        key = b"" if j == 0 else struct.pack(">H", j)
        node = struct.pack("<HHHH", child & 0xFFFF, (child >> 16) & 0xFFFF, child >> 32,
                           len(key)) + key
        upper -= (len(node) + 1) & ~1
        page[upper:upper + len(node)] = node
        struct.pack_into("<H", page, 16 + 2 * j, upper)
    struct.pack_into("<QHHHH", page, 0, pgno, 0, 0x01, 16 + 2 * n, upper)
    return page


def test_a_dag_of_branch_pages_does_not_hang_the_planner(store, tmp_path):
    """Branch pages whose 300 nodes all point at the same next page, five levels down to the
    first leaf (LMDB's own cursor reads the store), with a meta counting 2**62 branch pages:
    the walk visited 300**4 pages, growing its list of hints without end (the planner hung).
    It now stops past the snapshot's page count, which the file's size bounds."""
    import shutil
    import struct

    path, keys, _ = store
    dam = tmp_path / "env"
    shutil.copytree(path, dam)
    data = bytearray((dam / "data.mdb").read_bytes())
    first = _first_leaf_path(data)
    chain = list(range(100, 105))
    assert not set(chain) & set(first)
    for i, pgno in enumerate(chain):
        child = chain[i + 1] if i + 1 < len(chain) else first[-1]
        data[pgno * PAGE:(pgno + 1) * PAGE] = _branch_page(pgno, child, 300)
    db = _meta_off(data) + 24 + 48
    struct.pack_into("<H", data, db + 6, len(chain) + 1)  # depth
    struct.pack_into("<Q", data, db + 8, 1 << 62)  # branch pages
    struct.pack_into("<Q", data, db + 40, chain[0])  # root
    (dam / "data.mdb").write_bytes(bytes(data))
    with lmdb.open(str(dam), readonly=True, lock=False) as env, env.begin() as txn:
        assert txn.cursor().first()  # LMDB itself reads the store
    r = _hints_in_a_child(dam)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.split() == ["None"]
