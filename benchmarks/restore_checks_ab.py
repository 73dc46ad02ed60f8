"""A/B of whole restores through the CLI into a new LMDB target: two source trees (default
main's and this one), interleaved rounds (order alternating), medians of wall and CPU seconds
(children's user + sys). Used for the restore's checks before writing (docs/PERFORMANCE.md,
"Restore's checks before writing").

    python benchmarks/restore_checks_ab.py [--a /work/main/src] [--b src] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(src: str, *args: str) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=src)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env, check=True,
                   capture_output=True)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.perf_counter() - t,
            (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", default="/work/main/src")
    ap.add_argument("--b", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    trees = {"a": args.a, "b": args.b}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sys.path.insert(0, args.b)
        from dsbackup import datasets

        datasets.write_lmdb(str(d / "s"), datasets.iter_small(args.records))
        _run(args.b, "backup", f"lmdb:{d / 's'}", str(d / "full.tar.gz"), "--chunk-size", "4")
        _run(args.b, "backup", f"lmdb:{d / 's'}", str(d / "inc.tar.gz"), "--chunk-size", "4",
             "--parent", str(d / "full.tar.gz"))
        names = ("full.tar.gz", "inc.tar.gz")
        res = {k: {a: ([], []) for a in names} for k in trees}
        for r in range(args.rounds):
            for a in names:
                order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
                for k, src in order:
                    t = d / f"t-{k}"
                    shutil.rmtree(t, ignore_errors=True)
                    w, c = _run(src, "restore", str(d / a), f"lmdb:{t}")
                    res[k][a][0].append(w)
                    res[k][a][1].append(c)
        for a in names:
            m = {k: (statistics.median(res[k][a][0]), statistics.median(res[k][a][1]))
                 for k in trees}
            print(a, {k: (round(v[0], 3), round(v[1], 3)) for k, v in m.items()},
                  f"ratio b/a wall {m['b'][0] / m['a'][0]:.3f} cpu {m['b'][1] / m['a'][1]:.3f}")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
