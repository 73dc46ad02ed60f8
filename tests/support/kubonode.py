"""Reading a Kubo repository's records, for the whole-node tests."""

from __future__ import annotations

from pathlib import Path

from dsbackup.datastores import Query
from dsbackup.datastores.kubo import KuboDatastore


def kubo_records(path: Path) -> dict[bytes, bytes]:
    """Every record of both mounts (checked against a key-only query's count)."""
    ds = KuboDatastore(path, readonly=True)
    try:
        out = {k: v for ks, vs in ds.scan_batches() for k, v in zip(ks, vs)}
        assert out and len(out) == len(list(ds.query(Query(keys_only=True))))
        return out
    finally:
        ds.close()
