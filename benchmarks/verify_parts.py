"""Where a deep verify's CPU goes, stage by stage, for one archive (in this process, with what
a dsbackup process imports).

Usage: PYTHONPATH=SRC python benchmarks/verify_parts.py ARCHIVE [--rounds N]

Per round (thread CPU seconds): reading every chunk member (pread), its member XXH3 (from the
bytes read; and natively from the file, as quick verify does), decoding it (inflate, CRC-32,
tar header, data XXH3), then the data's XXH3 and CRC-32 alone. Run it with two builds'
packages (PYTHONPATH) to compare the XXH3 stages of each.
"""

from __future__ import annotations

import argparse
import time

from dsbackup._ext.checksum import crc32, xxh3_64
from dsbackup.archive.reader import ArchiveReader


def timed(fn) -> tuple[float, object]:
    t = time.thread_time()
    out = fn()
    return time.thread_time() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with ArchiveReader(args.archive) as r:
        ents = [r.entry(i) for i in range(r.chunk_count)]
        mb = sum(e.length for e in ents) / 1e6
        for _ in range(args.rounds):
            t_read, raws = timed(lambda: [r.pread(e.offset, e.length) for e in ents])
            t_x, _ = timed(lambda raws=raws: [xxh3_64(x) for x in raws])
            t_xf, _ = timed(lambda: [r._src.xxh3(e.offset, e.length) for e in ents])
            t_dec, outs = timed(lambda raws=raws: [r.decode_chunk_member(i, x)
                                                   for i, x in enumerate(raws)])
            db = sum(len(o) for o in outs) / 1e6
            t_xd, _ = timed(lambda outs=outs: [xxh3_64(o) for o in outs])
            t_c, _ = timed(lambda outs=outs: [crc32(o) for o in outs])
            print(f"members {mb:.0f} MB: pread {t_read:.3f} s, xxh3 {t_x:.3f} s "
                  f"({mb / t_x / 1e3:.1f} GB/s), xxh3 from the file {t_xf:.3f} s; decode "
                  f"{t_dec:.3f} s; data {db:.0f} MB: xxh3 {t_xd:.3f} s "
                  f"({db / t_xd / 1e3:.1f} GB/s), crc32 {t_c:.3f} s")


if __name__ == "__main__":
    main()
