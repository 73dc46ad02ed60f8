"""The two multipart upload paths side by side: obstore's writer (Rust) and ours
(dsbackup/storage/s3multipart.py: Python threads over http.client, conditional completion),
uploading the same bytes from memory to one `rclone serve s3` (benchmarks/s3.py's server), in
interleaved rounds. Wall and client CPU seconds per round; the ratios ours / obstore.

    python benchmarks/s3_multipart_ab.py [--mb 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from s3 import BUCKET, KEY_ID, SECRET, Server  # noqa: E402


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsb-mpab-") as work:
        server = Server("rclone", Path(work))
        os.environ.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
                          AWS_REGION="us-east-1", AWS_ENDPOINT_URL=server.endpoint)
        import obstore

        from dsbackup.storage import s3
        from dsbackup.storage.s3api import S3Api
        from dsbackup.storage.s3config import settings
        from dsbackup.storage.s3multipart import MultipartUpload

        s = settings()
        member = os.urandom(1 << 20)  # members of 1 MiB, as a backup hands them over
        n = a.mb

        def ours(key: str) -> None:
            up = MultipartUpload(S3Api.from_config(), BUCKET, key, part_size=s.part_size,
                                 concurrency=s.concurrency)
            for _ in range(n):
                up.write(b"".join([member]))  # the sink's one copy
            up.complete(replace=True)

        def theirs(key: str) -> None:
            w = obstore.open_writer(s3.store(BUCKET), key, buffer_size=s.part_size,
                                    max_concurrency=s.concurrency)
            for _ in range(n):
                w.write(b"".join([member]))
            w.close()

        rows: dict[str, list[tuple[float, float]]] = {"obstore": [], "ours": []}
        try:
            for r in range(a.rounds):
                for name, fn in (("obstore", theirs), ("ours", ours))[:: 1 if r % 2 else -1]:
                    c0, t0 = _cpu(), time.perf_counter()
                    fn(f"{name}-{r}")
                    rows[name].append((time.perf_counter() - t0, _cpu() - c0))
                    server.delete(f"{name}-{r}")
        finally:
            server.stop()
    for name, vals in rows.items():
        print(f"{name:8s} wall {[round(w, 2) for w, _ in vals]} median "
              f"{statistics.median(w for w, _ in vals):.2f} s; client CPU median "
              f"{statistics.median(c for _, c in vals):.2f} s ({n} MiB)")
    per_round = [o[0] / t[0] for o, t in zip(rows["ours"], rows["obstore"])]
    cpu_round = [o[1] / t[1] for o, t in zip(rows["ours"], rows["obstore"])]
    print(f"ours / obstore: wall per round {[round(x, 2) for x in per_round]} median "
          f"{statistics.median(per_round):.2f}; client CPU median "
          f"{statistics.median(cpu_round):.2f}")


if __name__ == "__main__":
    main()
