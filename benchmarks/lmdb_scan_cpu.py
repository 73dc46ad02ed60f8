"""CPU seconds of one LMDB range scan of a whole store, framed but not compressed (the read part
of a backup worker's work: cursor, copies, digests, framing).

Usage: PYTHONPATH=TREE/src python benchmarks/lmdb_scan_cpu.py LMDB_DIR [CHUNK_SIZE]
Prints the scan's CPU seconds and the records framed. Interleave two trees in a shell loop for
an A/B (docs/PERFORMANCE.md, "Change 5").
"""

import sys
import time

from dsbackup._ext.lmdbscan import LmdbRangeScanner

cs = int(sys.argv[2]) if len(sys.argv) > 2 else 4263  # the auto chunk size of the small set
s = LmdbRangeScanner(sys.argv[1], chunk_size=cs, chunk_max_bytes=2 << 20, level=-1)
t = time.process_time()
n = 0
while (c := s.next_chunk()) is not None:
    n += c.record_count
print(round(time.process_time() - t, 4), n)
