"""lmdb: one environment per process, map growth, append put_many, read-only, and
consistent snapshots while other processes write."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dsbackup.datastores import lmdb as lmdb_backend
from dsbackup.datastores import open_datastore
from dsbackup.datastores.lmdb import LmdbDatastore
from dsbackup.errors import DatastoreError, InvalidKey

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC)


def test_one_environment_per_process(tmp_path):
    path = tmp_path / "db"
    assert not lmdb_backend.is_open(path)
    ds = LmdbDatastore(path)
    assert lmdb_backend.is_open(path) and lmdb_backend.is_open(str(path) + "/")
    with pytest.raises(DatastoreError, match="already open in this process"):
        LmdbDatastore(path, readonly=True)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(DatastoreError, match="already open"):
        open_datastore(f"lmdb:{link}")
    ds.close()
    assert not lmdb_backend.is_open(path)
    again = LmdbDatastore(path, readonly=True)
    again.close()
    dropped = LmdbDatastore(path)
    del dropped
    gc.collect()
    assert not lmdb_backend.is_open(path)  # garbage collection closes and unregisters


def test_map_grows_on_demand(tmp_path):
    ds = LmdbDatastore(tmp_path / "db", map_size=1 << 20, sync=False)
    blob = os.urandom(64 << 10)
    for i in range(100):  # 6.4 MB through a 1 MiB map
        ds.put(f"/k/{i:04d}", blob)
    b = ds.batch()
    for i in range(100, 200):
        b.put(f"/k/{i:04d}", blob)
    b.commit()
    assert ds.approx_count() == 200
    assert ds._env.info()["map_size"] >= 12 << 20
    ds.close()


def test_map_cannot_grow_under_an_open_scan(tmp_path):
    ds = LmdbDatastore(tmp_path / "db", map_size=1 << 20, sync=False)
    ds.put("/a", b"1")
    scan = ds.scan_batches()
    next(scan)
    with pytest.raises(DatastoreError, match="cannot grow while a scan"):
        ds.put_many([b"/big%03d" % i for i in range(40)], [os.urandom(64 << 10)] * 40)
    scan.close()
    ds.put_many([b"/big%03d" % i for i in range(40)], [os.urandom(64 << 10)] * 40)
    assert ds.approx_count() == 41
    ds.close()


def test_put_many_append_and_overwrite(tmp_path):
    ds = LmdbDatastore(tmp_path / "db", sync=False)
    keys = [b"/r/%06d" % i for i in range(5000)]
    ds.put_many(keys, [k[::-1] for k in keys])  # sorted into an empty db: append mode
    ds.put_many([b"/r/%06d" % i for i in (7, 3)], [b"x", b"y"])  # unsorted: plain puts
    ds.put_many([b"/r/000001", b"/r/000002"], [b"p", b"q"])  # sorted but not past the end
    ds.put_many([b"/s/1", b"/s/2"], [b"1", b"2"])  # sorted past the end: append again
    got = dict(kv for ks, vs in ds.scan_batches() for kv in zip(ks, vs))
    assert len(got) == 5002
    assert got[b"/r/000007"] == b"x" and got[b"/r/000003"] == b"y"
    assert got[b"/r/000001"] == b"p" and got[b"/r/004999"] == b"/r/004999"[::-1]
    assert got[b"/s/2"] == b"2"
    with pytest.raises(InvalidKey):
        ds.put_many([b"/" + b"x" * 600], [b"v"])
    with pytest.raises(InvalidKey):
        ds.put("/" + "x" * 600, b"v")
    ds.close()


def test_readonly(tmp_path):
    with pytest.raises(DatastoreError, match="data.mdb missing"):
        LmdbDatastore(tmp_path / "none", readonly=True)
    LmdbDatastore(tmp_path / "db").close()
    ds = open_datastore(str(tmp_path / "db"), readonly=True)
    assert isinstance(ds, LmdbDatastore) and ds.readonly and ds.parallel_readable
    with pytest.raises(DatastoreError, match="read-only"):
        ds.put("/a", b"1")
    ds.check()
    ds.scrub()
    ds.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_environment_is_not_carried_across_fork(tmp_path):
    ds = LmdbDatastore(tmp_path / "db", sync=False)
    ds.put("/a", b"1")
    pid = os.fork()
    if pid == 0:  # child: the inherited object refuses, the path is free to reopen
        code = 1
        try:
            try:
                ds.get("/a")
            except DatastoreError as e:
                if "before fork" in str(e) and not lmdb_backend.is_open(tmp_path / "db"):
                    fresh = LmdbDatastore(tmp_path / "db", readonly=True)
                    code = 0 if fresh.get("/a") == b"1" else 3
                    fresh.close()
            ds.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ds.get("/a") == b"1"  # the parent's environment still works
    ds.close()


WRITER = textwrap.dedent("""
    import os, struct, sys, time
    from dsbackup.datastores import open_datastore
    ds = open_datastore(sys.argv[1])
    keys = [b"/snap/%05d" % i for i in range(int(sys.argv[2]))]
    gen = 1
    deadline = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline and not os.path.exists(sys.argv[4]):
        gen += 1
        # every value of a generation is the same; values grow so the map must grow
        value = struct.pack(">Q", gen) * (8 + gen)
        ds.put_many(keys, [value] * len(keys))
    ds.close()
    print(gen)
""")

READER = textwrap.dedent("""
    import json, sys, time
    from dsbackup.datastores import open_datastore
    ds = open_datastore(sys.argv[1], readonly=True)
    n = int(sys.argv[2])
    deadline = time.monotonic() + float(sys.argv[3])
    scans, gens = 0, set()
    while time.monotonic() < deadline or scans < 3:
        values = set()
        count = 0
        for keys, vals in ds.scan_batches(max_records=97):
            count += len(keys)
            values.update(vals)
        assert count == n, ("torn scan: record count", count)
        assert len(values) == 1, ("torn scan: generations mixed", len(values))
        gens.add(values.pop()[:8])
        scans += 1
    ds.close()
    print(json.dumps({"scans": scans, "gens": sorted(g.hex() for g in gens)}))
""")


def test_two_readers_and_a_writer_in_separate_processes(tmp_path):
    n = 2000
    path = tmp_path / "db"
    ds = LmdbDatastore(path, map_size=1 << 20, sync=False)
    keys = [b"/snap/%05d" % i for i in range(n)]
    ds.put_many(keys, [(1).to_bytes(8, "big") * 9] * n)
    uri = ds.uri
    ds.close()
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, uri, str(n), "20", str(stop)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    time.sleep(0.3)
    readers = [subprocess.Popen([sys.executable, "-c", READER, uri, str(n), "1.5"],
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    results = []
    for r in readers:
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        results.append(json.loads(out))
    stop.write_text("stop")
    wout, werr = writer.communicate(timeout=60)
    assert writer.returncode == 0, werr
    assert int(wout) >= 3
    assert all(res["scans"] >= 3 for res in results)
    seen = {g for res in results for g in res["gens"]}
    assert len(seen) >= 2, "the writer made no progress while the readers scanned"
    final = LmdbDatastore(path, readonly=True)
    assert final._env.info()["map_size"] > 1 << 20  # the writer grew the map
    final.close()


SNAPSHOT_READER = textwrap.dedent("""
    import sys
    from dsbackup.datastores import open_datastore
    ds = open_datastore(sys.argv[1], readonly=True)
    it = ds.scan_batches(max_records=3)
    first = next(it)  # the read transaction begins here
    print(ds.last_txn_id(), flush=True)
    sys.stdin.readline()  # the parent commits more writes now
    print(len(first[0]) + sum(len(k) for k, _ in it), flush=True)
""")


def test_writer_lock_pins_one_snapshot_for_other_processes(tmp_path):
    ds = LmdbDatastore(tmp_path / "db", sync=False)
    ds.put_many([b"/a%03d" % i for i in range(10)], [b"v"] * 10)
    with ds.writer_lock() as txn_id:
        assert txn_id == ds.last_txn_id()
        reader = subprocess.Popen([sys.executable, "-c", SNAPSHOT_READER, ds.uri], env=_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert int(reader.stdout.readline()) == txn_id
    ds.put_many([b"/b%03d" % i for i in range(5)], [b"w"] * 5)
    assert ds.last_txn_id() == txn_id + 1
    out, _ = reader.communicate("go\n", timeout=60)
    assert int(out) == 10  # the reader's scan stays on the snapshot it began under the lock
    ro = tmp_path / "ro"
    LmdbDatastore(ro).close()
    with LmdbDatastore(ro, readonly=True) as r, pytest.raises(DatastoreError, match="read-only"), \
            r.writer_lock():
        pass
    ds.close()


def test_claims_by_other_lmdb_users(tmp_path):
    path = tmp_path / "db"
    LmdbDatastore(path).close()
    with lmdb_backend.claim(path, "dsbackup._ext.lmdbscan"):
        assert lmdb_backend.is_open(path)
        with pytest.raises(DatastoreError, match="by dsbackup._ext.lmdbscan"):
            LmdbDatastore(path, readonly=True)
        with pytest.raises(DatastoreError, match="already open"), \
                lmdb_backend.claim(path, "someone else"):
            pass
    assert not lmdb_backend.is_open(path)
    ds = LmdbDatastore(path, readonly=True)
    with pytest.raises(DatastoreError, match="already open"), \
            lmdb_backend.claim(str(path) + "/", "dsbackup._ext.lmdbscan"):
        pass
    ds.close()
