"""The native LMDB -> LMDB copier (ext/lmdbcopy.pyx) and the copy step's use of it."""

from __future__ import annotations

import threading
from pathlib import Path

import lmdb
import pytest
from lmdb_files import read_all

from dsbackup import FilterConfig, MigrationConfig, MigrationManager, MigrationPlan, MigrationStep
from dsbackup._ext import lmdbcopy
from dsbackup.datastores import open_datastore
from dsbackup.migration import lmdbfast

from .helpers import fill, kv_items, records, store_digest


def items(n: int) -> dict[bytes, bytes]:
    return {b"/k/%06d" % i: bytes([i % 251]) * (i % 700) for i in range(n)}


def test_copies_ranges_in_batches_and_grows_the_map(tmp_path: Path) -> None:
    data = items(3000)
    fill(f"lmdb:{tmp_path}/src", data)
    c = lmdbcopy.LmdbCopier(tmp_path / "src", tmp_path / "dst", b"", None, map_size=256 << 10)
    total, nbytes, lasts = 0, 0, []
    with c:
        while True:
            last, n, nb = c.copy(700, 1 << 30)
            if not n:
                break
            total, nbytes = total + n, nbytes + nb
            lasts.append(last)
        c.sync()
        assert c.done
    assert total == 3000 and nbytes == sum(map(len, data.values()))
    assert lasts[0] == b"/k/000699" and lasts[-1] == b"/k/002999"
    assert read_all(tmp_path / "dst") == sorted(data.items())  # grew from 256 KiB past 1 MB


def test_range_bounds_byte_limit_and_overwrite(tmp_path: Path) -> None:
    data = items(500)
    fill(f"lmdb:{tmp_path}/src", data)
    fill(f"lmdb:{tmp_path}/dst", {b"/k/000100": b"old", b"/z": b"keep"})
    with lmdbcopy.LmdbCopier(tmp_path / "src", tmp_path / "dst", b"/k/000050",
                             b"/k/000150") as c:
        last, n, nb = c.copy(1000, 1)  # max_bytes reached after the first non-empty value
        assert (last, n) == (b"/k/000050", 1)
        last, n, _ = c.copy(1000, 1 << 30)
        assert (last, n) == (b"/k/000149", 99) and c.done
        assert c.copy() == (None, 0, 0)
    got = dict(read_all(tmp_path / "dst"))
    assert got[b"/k/000100"] == data[b"/k/000100"] and got[b"/z"] == b"keep"
    assert len(got) == 101


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(lmdbcopy.LmdbCopyError, match="cannot open"):
        lmdbcopy.LmdbCopier(tmp_path / "nope", tmp_path / "dst")


def test_copy_step_uses_the_native_copier_and_resumes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = kv_items(6000)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, data)
    used = []
    real = lmdbfast.native_copier

    def spy(*a, **kw):
        used.append(a[2:])
        return real(*a, **kw)
    monkeypatch.setattr(lmdbfast, "native_copier", spy)
    plan = MigrationPlan(id="p", version="1", steps=[
        MigrationStep(id="c", type="copy", filters=FilterConfig(key_prefix="/b"))])
    cancel = threading.Event()
    seen = [0]

    def progress(ev: object) -> None:
        seen[0] += 1
        if seen[0] == 3:
            cancel.set()
    cfg = MigrationConfig(batch_size=300, checkpoint_interval=0)
    first = MigrationManager(cfg).execute_migration(plan, src, dst, progress=progress,
                                                    cancel=cancel)
    assert first.error == "Cancelled" and used == [(b"/b/", b"/b0")]
    assert 0 < len(records(dst)) < 2000
    done = MigrationManager(cfg).execute_migration(plan, src, dst)
    assert done.success and done.resumed, done.error_log
    want = {k: v for k, v in data.items() if k.startswith(b"/b/")}
    assert records(dst) == want
    assert done.steps[0].records == done.steps[0].written == len(want)
    assert done.steps[0].bytes == sum(map(len, want.values()))
    assert used[1][0] > b"/b/"  # resumed after the last checkpointed key


def test_stores_passed_as_objects_use_the_py_lmdb_path(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = kv_items(500)
    fill(f"lmdb:{tmp_path}/src", data)
    monkeypatch.setattr(lmdbfast, "native_copier", lambda *a, **kw: pytest.fail("native"))
    s = open_datastore(f"lmdb:{tmp_path}/src")
    d = open_datastore(f"lmdb:{tmp_path}/dst")
    try:
        res = MigrationManager().execute_migration(
            MigrationPlan(id="p", version="1", steps=[MigrationStep(id="c", type="copy")]), s, d)
        assert res.success and res.steps[0].written == 500
    finally:
        s.close()
        d.close()
    assert records(f"lmdb:{tmp_path}/dst") == data


def test_compare_range_finds_missing_and_different_records(tmp_path: Path) -> None:
    data = items(1000)
    fill(f"lmdb:{tmp_path}/src", data)
    fill(f"lmdb:{tmp_path}/same", {**data, b"/extra": b"ignored"})
    n, nbytes, bad, key, kind = lmdbcopy.compare_range(tmp_path / "src", tmp_path / "same")
    assert (n, nbytes, bad, key, kind) == (1000, sum(map(len, data.values())), 0, None, None)
    other = dict(data)
    del other[b"/k/000010"]
    other[b"/k/000500"] = b"changed"
    del other[b"/k/000999"]
    fill(f"lmdb:{tmp_path}/other", other)
    n, _, bad, key, kind = lmdbcopy.compare_range(tmp_path / "src", tmp_path / "other")
    assert (n, bad, key, kind) == (1000, 3, b"/k/000010", "missing")
    n, _, bad, key, kind = lmdbcopy.compare_range(tmp_path / "src", tmp_path / "other",
                                                  b"/k/000400", b"/k/000600")
    assert (n, bad, key, kind) == (200, 1, b"/k/000500", "differs")


def test_native_verify_failure_stops_a_move_before_any_delete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = kv_items(900)
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    fill(src, data)
    before = store_digest(src)
    real = lmdbfast.native_compare

    def tampered(src_path, dst_path, s, e):
        env = lmdb.open(dst_path)
        with env.begin(write=True) as txn:
            txn.put(b"/m/000002", b"tampered")
        env.close()
        return real(src_path, dst_path, s, e)
    monkeypatch.setattr(lmdbfast, "native_compare", tampered)
    plan = MigrationPlan(id="p", version="1", steps=[
        MigrationStep(id="mv", type="move", filters=FilterConfig(key_prefix="/m"))])
    res = MigrationManager(MigrationConfig(rollback_on_failure=False)).execute_migration(
        plan, src, dst)
    assert not res.success and res.error == "ValidationError"
    assert "verification failed" in res.error_log[-1] and "/m/000002 differs" in res.error_log[0]
    assert store_digest(src) == before  # nothing deleted from the source
