"""Restoring archives written by the Go tool: exactly the key/value map they hold."""

from __future__ import annotations

import json

from go_archives import go_archive

from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager

RECORDS = [(f"/blocks/CIQ{i:04d}", bytes([i % 256]) * (i * 37 % 900)) for i in range(10)]
RECORDS += [("/pins/a", b"pin-a"), ("/blocks/CIQ0003", b"overwritten later"),
            ("/local/empty", None), ("/z", b"last")]


def expected() -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for k, v in RECORDS:
        out[k.encode()] = v or b""
    return out


def test_go_archive_restores_exactly(tmp_path):
    path = tmp_path / "go-backup.tar.gz"
    members = go_archive(path, RECORDS, chunk_size=4)
    names = [n for n, _ in members]
    assert len(names) != len(set(names))  # the Go writer's duplicate member name
    res = BackupManager().restore_backup(path, f"lmdb:{tmp_path / 'dst'}")
    want = expected()
    assert res.records_written == len(want)
    with open_datastore(f"lmdb:{tmp_path / 'dst'}", readonly=True) as ds:
        got = {k: v for keys, values in ds.scan_batches() for k, v in zip(keys, values)}
    assert got == want


def test_go_archive_restore_cli_with_prefix(tmp_path, run_cli):
    path = tmp_path / "go-backup.tar.gz"
    go_archive(path, RECORDS, chunk_size=3)
    r = run_cli("restore", path, f"sqlite:{tmp_path / 'dst.sqlite'}", "--prefix", "/blocks",
                "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restore"]["records_written"] == 10
    with open_datastore(f"sqlite:{tmp_path / 'dst.sqlite'}", readonly=True) as ds:
        got = {k: v for keys, values in ds.scan_batches() for k, v in zip(keys, values)}
    assert got == {k: v for k, v in expected().items() if k.startswith(b"/blocks/")}


def test_go_archive_restore_honours_cancel_and_reports_progress(tmp_path):
    """restore_backup's `cancel` and `progress` were not passed to the Go restore: a set
    cancel (a caller's Ctrl-C handler, a timeout) restored the whole archive anyway, and the
    callback was never called."""
    import threading

    import pytest

    from dsbackup.errors import Cancelled

    path = tmp_path / "go-backup.tar.gz"
    go_archive(path, RECORDS, chunk_size=4)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled) as exc:
        BackupManager().restore_backup(path, f"lmdb:{tmp_path / 'dst'}", cancel=stop)
    assert exc.value.exit_code == 130
    # nothing written, and the store it made is gone (engine/newtarget.py)
    assert not (tmp_path / "dst").exists()
    seen = []
    res = BackupManager().restore_backup(path, f"lmdb:{tmp_path / 'dst'}", progress=seen.append)
    assert seen and seen[-1].records == res.records_written == len(expected())
    assert seen[-1].chunks == 4
