"""The parallel backup's parent: CPU per chunk, trees interleaved (issue #21, "many cores").

On a machine with many cores the workers compress in parallel while ONE process (the CLI:
it receives the chunks, hands out stripes and slots, writes the archive and builds its
index) handles every chunk. This measures that process's cost per chunk on a small machine
by making the workers' share tiny: ``--level 0`` (stored) and small chunks.

Usage: python benchmarks/perchunk_ab.py [--rounds N] [--levels 0,1] [--workers 2]
           [--data blocks,small,blocks1m] [--out DIR] TREE[:ENV=V,...] [TREE ...]

Each TREE is a checkout (its src/ goes on PYTHONPATH, compiled to .pyc first). Every round
backs up each data set with every tree (order reversed every other round) twice, "many" and
"few" chunks, ``--no-verify``, the archives in ``--out`` (default /dev/shm; tmpfs allocates
its pages dearly: a 1 MiB ``writev`` there took 0.53 ms on the 2-core VM, 0.21 ms into ext4's
page cache — give a disk directory for ``blocks1m``):

- ``blocks``: benchdata's blocks (1024 x 256 KiB, LMDB) at 1 record a chunk against 16
  (chunks of 2 MiB, the largest): the per-chunk cost, the bytes being the same;
- ``small``: benchdata's small records (500,000 x ~250 B) at 64 records a chunk against 1024;
- ``blocks1m``: 2048 blocks against 1024, default chunks (~1 MiB): the cost of one default
  chunk with its bytes (writev, hashing), start-up cancelled — what bounds the parent at the
  default settings (1 MiB / that = its ceiling in MB/s).

Data sets are built and cached on first use (``DSBACKUP_BENCH_DIR``). Measured per backup:
the CLI process's own CPU seconds (all its threads; getrusage at exit), the CPU of all its
processes (``perf stat -e task-clock``, when perf is there) and the wall time. Per chunk:
(CPU_many - CPU_few) / (chunks_many - chunks_few), so start-up and whatever does not change
between the two cancel. Medians of the rounds; the first tree is the baseline of the
per-round ratios.

The numbers to report are the ratios; absolute µs depend on the machine and its load.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
HERE = Path(__file__).resolve().parent
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
# the CLI, run so that its own CPU time (threads included) is written at exit
WRAP = ("import atexit, os, resource, runpy, sys\n"
        "def _out():\n"
        "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    with open(os.environ['PERCHUNK_CPU_OUT'], 'w') as f:\n"
        "        f.write(repr(r.ru_utime + r.ru_stime))\n"
        "atexit.register(_out)\n"
        "sys.argv = ['dsbackup', *sys.argv[1:]]\n"
        "runpy.run_module('dsbackup', run_name='__main__')\n")
# data set -> ("many": store, chunk size or None for the default), ("few": the same)
PAIRS = {"blocks": (("blocks", 1), ("blocks", 16)), "small": (("small", 64), ("small", 1024)),
         "blocks1m": (("blocks2048", None), ("blocks", None))}


def _env(spec: str) -> dict[str, str]:
    tree, _, extra = spec.partition(":")
    env = dict(ENV0, PYTHONPATH=f"{tree}/src")
    for kv in filter(None, extra.split(",")):
        k, v = kv.split("=", 1)
        env[k] = v
    return env


def _backup(spec: str, src: str, level: int, chunk: int | None, workers: int,
            work: str, out_dir: str) -> dict[str, float]:
    env = _env(spec)
    out = os.path.join(out_dir, f"pc-{os.getpid()}.dsb")
    cpu_file = os.path.join(work, "cpu")
    env["PERCHUNK_CPU_OUT"] = cpu_file
    if os.path.exists(out):
        os.unlink(out)
    cmd = [PY, "-c", WRAP, "backup", "lmdb:" + src, out, "--level", str(level),
           "--workers", str(workers), "--no-verify", "--json"]
    if chunk is not None:
        cmd += ["--chunk-size", str(chunk)]
    perf = shutil.which("perf")
    if perf:
        cmd = [perf, "stat", "-x,", "-e", "task-clock", *cmd]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{spec}: backup failed ({p.returncode}): {p.stderr[-2000:]}")
    os.unlink(out)
    res = {"wall": wall, "self": float(Path(cpu_file).read_text()),
           "chunks": json.loads(p.stdout)["backup"]["chunks"]}
    if perf:
        line = next(x for x in p.stderr.splitlines() if "task-clock" in x)
        res["all"] = float(line.split(",")[0]) / 1000
    return res


def _warm(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def _datasets(names: list[str]) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    import benchdata

    want = {store for n in names for store, _ in PAIRS[n]}
    out = {}
    if "blocks" in want:
        out["blocks"] = benchdata.blocks_lmdb(1024).path
    if "blocks2048" in want:
        out["blocks2048"] = benchdata.blocks_lmdb(2048).path
    if "small" in want:
        out["small"] = benchdata.small_lmdb(500_000).path
    return out


def main(argv: list[str]) -> None:
    opts = {"--rounds": "5", "--levels": "0,1", "--workers": "2", "--data": "blocks,small",
            "--out": "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()}
    specs = []
    it = iter(argv)
    for a in it:
        if a in opts:
            opts[a] = next(it)
        else:
            specs.append(a)
    if not specs:
        raise SystemExit(__doc__)
    rounds, workers = int(opts["--rounds"]), int(opts["--workers"])
    levels = [int(x) for x in opts["--levels"].split(",")]
    names = opts["--data"].split(",")
    stores = _datasets(names)
    for spec in specs:
        subprocess.run([PY, "-m", "compileall", "-q", f"{spec.partition(':')[0]}/src/dsbackup"],
                       check=True)
    work = tempfile.mkdtemp(prefix="perchunk-")
    print(f"load average {os.getloadavg()}; {rounds} rounds; {workers} workers; archives in "
          f"{opts['--out']}")
    for name in names:
        (smany, many), (sfew, few) = PAIRS[name]
        for store in {smany, sfew}:
            _warm(stores[store])
        for level in levels:
            res: dict[str, list[dict]] = {s: [] for s in specs}
            for r in range(rounds):
                for s in specs if r % 2 == 0 else specs[::-1]:
                    a = _backup(s, str(stores[smany]), level, many, workers, work, opts["--out"])
                    b = _backup(s, str(stores[sfew]), level, few, workers, work, opts["--out"])
                    n = a["chunks"] - b["chunks"]
                    row = {"chunks": a["chunks"], "wall_many": a["wall"],
                           "self_many": a["self"],
                           "self_us": 1e6 * (a["self"] - b["self"]) / n,
                           "wall_us": 1e6 * (a["wall"] - b["wall"]) / n}
                    if "all" in a:
                        row["all_many"] = a["all"]
                        row["all_us"] = 1e6 * (a["all"] - b["all"]) / n
                    res[s].append(row)
            print(f"\n{name}, level {level}: {res[specs[0]][0]['chunks']} chunks "
                  f"({smany}, chunk size {many or 'auto'}) against {sfew}, chunk size "
                  f"{few or 'auto'}")
            keys = [k for k in ("self_us", "all_us", "wall_us", "self_many", "all_many",
                                "wall_many") if k in res[specs[0]][0]]
            for s in specs:
                med = {k: statistics.median(x[k] for x in res[s]) for k in keys}
                print(f"  {s}: " + ", ".join(
                    f"{k} {v:.1f}" if k.endswith("_us") else f"{k} {v:.3f}"
                    for k, v in med.items()))
            for s in specs[1:]:
                for k in keys:
                    if k == "wall_us":
                        continue  # a difference of two wall times: the machine's load
                    rs = [b[k] / a[k] for a, b in zip(res[specs[0]], res[s]) if a[k] > 0]
                    if rs:
                        print(f"  {s} / {specs[0]} {k}: per-round ratio median "
                              f"{statistics.median(rs):.3f}, lower in "
                              f"{sum(x < 1 for x in rs)}/{len(rs)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
