"""ISA-L level 1 in N processes on what a backup compresses, beside the ceiling row's bytes.

Usage: python benchmarks/isal_same_bytes.py LMDB_DIR [ROUNDS] [PROCESSES]

compare.py's ceiling row ("isal-1 in 2 processes") compresses the store's values only; a
backup compresses its records: `op u8 | key_len uvarint | value_len uvarint | key | value`
(docs/FORMAT.md), keys and framing included. This times both the way the ceiling row does
(the bytes in memory, 4 MiB pieces, each of PROCESSES forked processes compressing every
PROCESSES-th piece, from a start signal to the last one's end), interleaved, and prints the
medians and their ratio: how much more work the same ceiling is on a backup's bytes. Run it
under `chrt -f 10` (root) on a shared machine, as docs/PERFORMANCE.md explains.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

PIECE = 4 << 20


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _data(store: str) -> tuple[bytes, bytes]:
    """(the values, the framed records) of the store, in key order."""
    from dsbackup.datastores import open_datastore

    vals: list[bytes] = []
    recs: list[bytes] = []
    with open_datastore("lmdb:" + store, readonly=True) as ds:
        for keys, values in ds.scan_batches():
            for k, v in zip(keys, values):
                vals.append(v)
                recs += (b"\0", _uvarint(len(k)), _uvarint(len(v)), k, v)
    return b"".join(vals), b"".join(recs)


def _timed(data: bytes, procs: int) -> tuple[float, int]:
    """(seconds from the start signal to the last process's end, compressed bytes)."""
    from isal import isal_zlib

    view = memoryview(data)
    pieces = [view[i:i + PIECE] for i in range(0, len(data), PIECE)]
    go_r, go_w = os.pipe()
    kids = []
    for i in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(go_w)
                os.close(r)
                if os.read(go_r, 1):
                    size = sum(len(isal_zlib.compress(p, 1)) for p in pieces[i::procs])
                    os.write(w, json.dumps([time.perf_counter(), size]).encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(w)
        kids.append((pid, r))
    os.close(go_r)
    t0 = time.perf_counter()
    os.write(go_w, b"g" * procs)
    os.close(go_w)
    end, size = t0, 0
    for pid, r in kids:
        with os.fdopen(r, "rb") as f:
            text = f.read()
        os.waitpid(pid, 0)
        if not text:
            raise SystemExit(f"compressing process {pid} failed")
        e, s = json.loads(text)
        end, size = max(end, e), size + s
    return end - t0, size


def main(argv: list[str]) -> None:
    store = argv[0]
    rounds = int(argv[1]) if len(argv) > 1 else 5
    procs = int(argv[2]) if len(argv) > 2 else 2
    values, records = _data(store)
    res: dict[str, list[float]] = {"values (the ceiling row)": [], "records (a backup's)": []}
    sizes = {}
    for r in range(rounds):
        order = list(zip(res, (values, records)))
        for name, data in order if r % 2 == 0 else order[::-1]:
            secs, sizes[name] = _timed(data, procs)
            res[name].append(secs)
    for (name, secs), data in zip(res.items(), (values, records)):
        print(f"{name}: {len(data)} bytes -> {sizes[name]}, {procs} processes: median "
              f"{statistics.median(secs):.3f} s {[round(x, 3) for x in secs]}")
    a, b = (statistics.median(v) for v in res.values())
    print(f"records / values: {b / a:.3f} (time), {len(records) / len(values):.3f} (bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
