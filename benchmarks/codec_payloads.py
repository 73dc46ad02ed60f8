"""Write the chunk payloads (and the gzip members) of an archive for benchmarks/c/codec_bench.c.

Usage: python benchmarks/codec_payloads.py ARCHIVE OUT_PREFIX
Writes OUT_PREFIX.payloads (each chunk's payload) and OUT_PREFIX.members (each chunk's gzip
member as stored in the archive), each record as u64 little-endian length + bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def main(argv: list[str]) -> int:
    from dsbackup.archive.reader import ArchiveReader

    archive, prefix = argv
    with ArchiveReader(archive) as r, open(prefix + ".payloads", "wb") as pf, \
            open(prefix + ".members", "wb") as mf:
        for i in range(r.chunk_count):
            member = r.read_member(i)
            payload = r.decode_chunk_member(i, member)
            for f, b in ((pf, payload), (mf, member)):
                f.write(len(b).to_bytes(8, "little"))
                f.write(b)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
