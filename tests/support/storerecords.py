"""Every record of a datastore, by URI, as a dict: what the tests compare restores with."""

from __future__ import annotations

from dsbackup.datastores import open_datastore


def store_records(uri: str) -> dict[bytes, bytes]:
    ds = open_datastore(uri, readonly=True)
    try:
        out: dict[bytes, bytes] = {}
        for keys, values in ds.scan_batches(b"", None, max_records=1000, max_bytes=1 << 30):
            out.update(zip(keys, values))
        return out
    finally:
        ds.close()
