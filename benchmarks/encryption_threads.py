"""Where an encrypted backup's extra CPU goes: ``perf record`` of plain and ``--encrypt``
backups (the whole process tree), samples split by thread and, in the sealing thread, by
library; interleaved runs, medians (docs/PERFORMANCE.md, "Encryption cost: where the
rest goes").

Usage: python benchmarks/encryption_threads.py [--dataset blocks] [--runs 5] [--workers 2]
       [--freq 2000] [--before SRC] [--json FILE]

Needs ``perf`` (Linux) with permission to sample user and kernel code. CPU seconds are
samples / frequency. Threads are told apart by what they run: the parent's main thread (its
pid), the sealing thread (the parent's thread that spends over a third of its samples in
libcrypto), other threads of the parent (key set-up, fsync), the workers (children that
spend over a third in ISA-L) and the other children (fork server, planner). A raw key file
is used, so no row pays scrypt. ``--before SRC``: also an encrypted row with the ``src``
directory SRC (another version, its extension built), in the same runs. Also prints the sealing pass's rate on a hot buffer in this
process (``seal_into``, 650 kB), the rate the sealing thread would have undisturbed.
Data sets: benchdata.py (scale with DSBACKUP_BENCH_SCALE).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

SEAL_PARTS = {"libcrypto": "aes-gcm", "crc32": "crc32", "xxhash": "xxh3", "libpython": "python",
              "kernel": "kernel"}


def _classify(perf_data: Path) -> collections.Counter:
    """Samples of one recording by thread class, and the sealing thread's by part."""
    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "pid,tid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    per: dict[tuple[int, int], list[tuple[str, str]]] = collections.defaultdict(list)
    for line in out.splitlines():
        p = line.split()
        if len(p) < 3 or "/" not in p[0]:
            continue
        pid, tid = map(int, p[0].split("/"))
        per[(pid, tid)].append((p[-1], " ".join(p[2:-1])))
    root = min(pid for pid, _ in per)
    n: collections.Counter = collections.Counter()
    for (pid, tid), rows in per.items():
        crypto = sum("libcrypto" in d for d, _ in rows)
        if pid == root:
            kind = ("main" if tid == root
                    else "sealing thread" if crypto > len(rows) / 3 else "parent, other")
        else:
            isal = sum("libisal" in d for d, _ in rows)
            kind = "workers" if isal > len(rows) / 3 else "children, other"
        n[kind] += len(rows)
        if kind == "sealing thread":
            for d, s in rows:
                part = next((v for k, v in SEAL_PARTS.items() if k in d or k in s), "other")
                n[f"sealing: {part}"] += 1
    return n


def _seal_rate() -> float:
    """ms of CPU per MiB of seal_into on a hot 650 kB buffer (best of 5 x 200 calls)."""
    from dsbackup._ext import seal

    key = seal.GcmKey(os.urandom(32))
    nonce, aad, data = os.urandom(12), b"a" * 37, os.urandom(650_000)
    out = bytearray(seal.sealed_size(len(data)))
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for _ in range(200):
            seal.seal_into(key, nonce, aad, data, out)
        best = min(best, time.process_time() - t)
    return best / 200 / len(data) * 2**20 * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="blocks", choices=["blocks", "small"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--freq", type=int, default=2000)
    ap.add_argument("--before", type=Path, default=None,
                    help="the src directory of another version: its encrypted row too")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if shutil.which("perf") is None:
        print("perf is not installed", file=sys.stderr)
        return 2
    import benchdata

    d = benchdata.blocks_lmdb() if args.dataset == "blocks" else benchdata.small_lmdb()
    work = Path(tempfile.mkdtemp(prefix="dsbackup-encthreads-"))
    key = work / "bench.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    enc = ["--encrypt", "--key-file", str(key)]
    src = str(ROOT / "src")
    modes = {"plain": ([], src), "encrypted": (enc, src)}
    if args.before is not None:
        modes["encrypted (before)"] = (enc, str(args.before.resolve()))
    samples: dict[str, list[collections.Counter]] = {m: [] for m in modes}
    results: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "dataset": args.dataset, "scale": benchdata.scale(), "runs": args.runs,
                     "workers": args.workers, "loadavg_start": os.getloadavg()}
    try:
        for r in range(args.runs):
            for mode in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                arc, data = work / "a.tar.gz", work / "perf.data"
                arc.unlink(missing_ok=True)
                subprocess.run(["perf", "record", "-q", "-F", str(args.freq), "-o", str(data),
                                sys.executable, "-m", "dsbackup", "backup", "--workers",
                                str(args.workers), *modes[mode][0], d.uri, str(arc)],
                               env=dict(os.environ, PYTHONPATH=modes[mode][1]), check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                n = _classify(data)
                samples[mode].append(n)
                total = sum(v for k, v in n.items() if ":" not in k) / args.freq
                print(f"  run {r + 1}: {mode:18} {total:6.3f} CPU s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table: dict[str, dict[str, float]] = {}
    for mode, runs in samples.items():
        for run in runs:
            run["total"] = sum(v for k, v in run.items() if ":" not in k)
        keys = sorted(set().union(*runs))
        table[mode] = {k: statistics.median(run[k] for run in runs) / args.freq for k in keys}
    results["cpu_s_medians"] = table
    paired = {m: [(e["total"] - p["total"]) / args.freq
                  for p, e in zip(samples["plain"], samples[m])] for m in modes if m != "plain"}
    ratios = {m: [e["total"] / p["total"] for p, e in zip(samples["plain"], samples[m])]
              for m in modes if m != "plain"}
    results["per_run_extra_cpu_s"], results["per_run_cpu_ratio"] = paired, ratios
    results["seal_into_ms_per_mib_hot"] = _seal_rate()
    results["loadavg_end"] = os.getloadavg()
    keys = sorted(set().union(*table.values()), key=lambda k: (":" in k, k))
    print(f"{'CPU s, median of ' + str(args.runs):28}" + "".join(f" {m:>18}" for m in modes))
    for k in keys:
        print(f"{k:28}" + "".join(f" {table[m].get(k, 0.0):18.3f}" for m in modes))
    for m in paired:
        print(f"{m} - plain, per run: {' '.join(f'{x:+.3f}' for x in paired[m])} CPU s "
              f"(median {statistics.median(paired[m]):+.3f}); / plain: "
              f"{' '.join(f'{x:.3f}' for x in ratios[m])} "
              f"(median {statistics.median(ratios[m]):.3f})")
    print(f"seal_into on a hot buffer here: {results['seal_into_ms_per_mib_hot']:.3f} ms/MiB; "
          f"load average {results['loadavg_start'][0]:.1f} -> {results['loadavg_end'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
