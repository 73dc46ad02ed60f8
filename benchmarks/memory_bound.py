"""Peak memory is bounded: backing up a 4× larger store takes the same peak RSS (±20%).

Each backup runs in a fresh process (`dsbackup backup --json`); the parent's and the largest
worker's peak resident set come from the archive summary. Scale with DSBACKUP_BENCH_SCALE
(1.0 = 1 GiB and 4 GiB of 256 KiB blocks).

    python benchmarks/memory_bound.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsbackup import datasets  # noqa: E402
from dsbackup.archive.reader import ArchiveReader  # noqa: E402


def backup_rss(src: Path, out: Path, workers: int) -> tuple[int, int, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(out),
                        "--workers", str(workers), "--json"], env=env, capture_output=True,
                       text=True, check=True)
    duration = json.loads(r.stdout)["backup"]["statistics"]["duration_s"]
    with ArchiveReader(out) as a:
        s = a.summary
    return s["peak_rss_bytes"], s["worker_peak_rss_bytes"], duration


def main() -> int:
    scale = float(os.environ.get("DSBACKUP_BENCH_SCALE", "1"))
    workers = int(os.environ.get("DSBACKUP_BENCH_WORKERS", "2"))
    small_blocks = max(64, int(4096 * scale))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsbackup-mem-") as d:
        for factor in (1, 4):
            n = small_blocks * factor
            src = Path(d) / f"src{factor}"
            # generated in a child process: a child's peak RSS starts from its parent's
            subprocess.run([sys.executable, "-c", "import sys; from dsbackup import datasets; "
                            "datasets.write_lmdb(sys.argv[1], datasets.iter_blocks("
                            "int(sys.argv[2]), seed=int(sys.argv[3])))", str(src), str(n),
                            str(factor)], env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                           check=True)
            parent, worker, dur = backup_rss(src, Path(d) / f"a{factor}.tar.gz", workers)
            rows.append((n, parent, worker, dur))
            print(f"{n * datasets.BLOCK_SIZE / 2**30:6.2f} GiB: parent peak RSS "
                  f"{parent / 2**20:7.1f} MiB, largest worker {worker / 2**20:7.1f} MiB, "
                  f"{dur:.1f} s", flush=True)
            (Path(d) / f"a{factor}.tar.gz").unlink()
    (_, p1, w1, _), (_, p4, w4, _) = rows
    ratio = (p4 + w4 * workers) / (p1 + w1 * workers)
    print(f"peak memory ratio 4x store / 1x store: {ratio:.2f} (bound: within 0.8-1.2)")
    return 0 if 0.8 <= ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
