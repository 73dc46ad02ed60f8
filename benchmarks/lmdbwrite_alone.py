"""The native LMDB restore's writer alone: thread CPU of LmdbPayloadWriter.write (issue #21).

Usage: python benchmarks/lmdbwrite_alone.py ARCHIVE [ROUNDS]

Every chunk payload of ARCHIVE (a dsbackup archive of an LMDB store) is decoded once, up
front, and batched as the restore batches them (restore.NATIVE_BATCH_BYTES); each round
writes all batches into a new LMDB environment (pwrite path, as restore opens it) and prints
the writing thread's CPU seconds (time.thread_time: no inflate, no start-up, no other
thread). Run it under each tree's PYTHONPATH, interleaved, to compare writer builds.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from dsbackup._ext.lmdbwrite import LmdbPayloadWriter
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine.restore import NATIVE_BATCH_BYTES


def batches(path: str) -> list[list[bytes]]:
    reader = ArchiveReader(path)
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    n = 0
    for i in range(reader.chunk_count):
        p = bytes(reader.read_chunk(i))
        if cur and n + len(p) > NATIVE_BATCH_BYTES:
            out.append(cur)
            cur, n = [], 0
        cur.append(p)
        n += len(p)
        if n >= NATIVE_BATCH_BYTES:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    reader.close()
    return out


def main(argv: list[str]) -> None:
    todo = batches(argv[0])
    rounds = int(argv[1]) if len(argv) > 1 else 5
    work = tempfile.mkdtemp(prefix="lmdbwrite-alone-")
    try:
        for _ in range(rounds):
            out = os.path.join(work, "env")
            shutil.rmtree(out, ignore_errors=True)
            writer = LmdbPayloadWriter(out, map_size=4 * sum(map(len, sum(todo, []))),
                                       writemap=False)
            c0 = time.thread_time()
            for batch in todo:
                writer.write(batch, append=True, overwrite=True)
            c1 = time.thread_time()
            writer.close()
            print(f"{c1 - c0:.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
