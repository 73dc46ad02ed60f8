"""Measure the native core against its baselines in one run and print the ratios.

Usage: python benchmarks/native_ratios.py [--json FILE] [--skip-lmdb] [--levels]
Scale the data sets with DSBACKUP_BENCH_SCALE (default 1.0). Times are per-thread CPU
seconds (``time.thread_time``; ``clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`` in the C
baseline), the best of several interleaved repetitions, so that other processes on a shared
machine disturb the ratios as little as possible.

Targets (see the native brief): big blocks >= 0.9x ``isal_zlib.compress`` at level 1; small
records >= 2 M records/s framed + compressed + hashed; LMDB scan >= 0.8x the plain C cursor
loop. The C loop is also run in a "touch" mode that copies and hashes every record the way
framing must, which is the cost floor of any scan that reads the values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import native_data as nd  # noqa: E402
from isal import isal_zlib  # noqa: E402

from dsbackup._ext import compress, framing, lmdbscan  # noqa: E402

REPS = int(os.environ.get("DSBACKUP_BENCH_REPS", "5"))


def best_of(fns: dict, reps: int = REPS) -> dict:
    """Best CPU time of each function, repetitions interleaved."""
    best = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - t0)
    return best


def big_blocks(results: dict) -> None:
    count = nd.scaled(256, 16)  # 64 MiB of 256 KiB blocks at scale 1
    blocks = nd.mixed_blocks(count)
    keys = nd.block_keys(count)
    data = b"".join(blocks)
    size = 4 << 20
    pieces = [data[i:i + size] for i in range(0, len(data), size)]

    def native_stream(batch=16):
        ch = framing.Chunker(10**9, size)
        out = 0
        for i in range(0, count, batch):
            for c in ch.add_compress(keys[i:i + batch], blocks[i:i + batch], 1):
                out += len(c.body.data)
        last = ch.finish_compress(1)
        return out + (len(last.body.data) if last else 0)

    def native_one_call():
        ch = framing.Chunker(10**9, size)
        chunks = ch.add_compress(keys, blocks, 1)
        chunks.append(ch.finish_compress(1))
        return chunks

    def isal_stream():
        return sum(len(isal_zlib.compress(p, 1)) for p in pieces)

    def isal_kept():
        return [isal_zlib.compress(p, 1) for p in pieces]

    t = best_of({"native_stream": native_stream, "isal_stream": isal_stream,
                 "native_one_call": native_one_call, "isal_kept": isal_kept})
    mb = len(data) / 1e6
    results["big_blocks"] = {
        "bytes": len(data),
        "native_MBps": mb / t["native_stream"],
        "isal_zlib_MBps": mb / t["isal_stream"],
        "ratio": t["isal_stream"] / t["native_stream"],
        "native_one_call_MBps": mb / t["native_one_call"],
        "isal_zlib_kept_MBps": mb / t["isal_kept"],
        "ratio_one_call": t["isal_kept"] / t["native_one_call"],
        "native_out_bytes": native_stream(),
        "isal_zlib_out_bytes": isal_stream(),
    }


def small_records(results: dict) -> None:
    n = nd.scaled(500_000, 1000)
    keys, values = nd.small_records(n)
    batch = 10_000

    def run(level):
        def fn():
            ch = framing.Chunker(1000, 4 << 20)
            for i in range(0, n, batch):
                if level < 0:
                    ch.add(keys[i:i + batch], values[i:i + batch])
                else:
                    ch.add_compress(keys[i:i + batch], values[i:i + batch], level)
            if level < 0:
                ch.finish()
            else:
                ch.finish_compress(level)
        return fn

    ch = framing.Chunker(1000, 4 << 20)
    payloads = [c.payload for c in ch.add(keys, values)] + [ch.finish().payload]

    def engine_only():
        for p in payloads:
            compress.deflate_body(p, 1)

    t = best_of({"frame": run(-1), "level0": run(0), "level1": run(1), "engine1": engine_only},
                reps=max(2, REPS - 2))
    results["small_records"] = {
        "records": n,
        "frame_only_Mrps": n / t["frame"] / 1e6,
        "level0_Mrps": n / t["level0"] / 1e6,
        "level1_Mrps": n / t["level1"] / 1e6,
        "isal1_engine_only_Mrps": n / t["engine1"] / 1e6,
    }


def lmdb_scan(results: dict, workdir: Path) -> None:
    n = nd.scaled(2_000_000, 10_000)
    env = nd.make_lmdb(workdir / f"lmdb-{n}", n)
    exe = workdir / "lmdb_cursor_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "c" / "lmdb_cursor_loop.c"),
                    "-llmdb", "-lxxhash"], check=True)

    def c_loop(mode):
        out = subprocess.run([str(exe), str(env), str(REPS), mode], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)

    def scan(level):
        def fn():
            with lmdbscan.LmdbRangeScanner(str(env), chunk_size=1000, chunk_max_bytes=4 << 20,
                                           level=level) as s:
                for _ in s:
                    pass
        return fn

    plain = c_loop("sum")
    touch = c_loop("touch")
    t = best_of({"frame": scan(-1), "level0": scan(0)})
    results["lmdb_scan"] = {
        "records": plain["records"],
        "c_loop_s": plain["cpu_s"],
        "c_touch_loop_s": touch["cpu_s"],
        "scan_frame_only_s": t["frame"],
        "scan_level0_s": t["level0"],
        "ratio_frame_only": plain["cpu_s"] / t["frame"],
        "ratio_level0": plain["cpu_s"] / t["level0"],
        "ratio_frame_only_vs_touch": touch["cpu_s"] / t["frame"],
        "scan_frame_only_Mrps": plain["records"] / t["frame"] / 1e6,
    }


def levels(results: dict) -> None:
    blocks = nd.mixed_blocks(nd.scaled(64, 4))
    total = sum(map(len, blocks))
    out = {}
    for level, engine in compress.ENGINES.items():
        reps = 3 if level < 4 else 1
        t = best_of({"x": lambda lv=level: [compress.deflate_body(b, lv) for b in blocks]}, reps)
        size = sum(len(compress.deflate_body(b, level).data) for b in blocks)
        out[level] = {"engine": engine, "MBps": total / t["x"] / 1e6, "ratio": size / total}
    results["levels"] = out


def gil(results: dict) -> None:
    data = b"".join(nd.mixed_blocks(nd.scaled(64, 8)))

    def one():
        compress.deflate_body(data, 1)

    one()
    t0 = time.perf_counter()
    one()
    single = time.perf_counter() - t0
    threads = [threading.Thread(target=one) for _ in range(2)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    results["gil"] = {"two_threads_over_one_call": (time.perf_counter() - t0) / single}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--skip-lmdb", action="store_true")
    ap.add_argument("--levels", action="store_true", help="also measure every level")
    args = ap.parse_args()
    results: dict = {"scale": nd.scale(), "reps": REPS, "loadavg": os.getloadavg()}
    big_blocks(results)
    small_records(results)
    if not args.skip_lmdb:
        with tempfile.TemporaryDirectory(prefix="dsbackup-bench-") as tmp:
            lmdb_scan(results, Path(os.environ.get("DSBACKUP_BENCH_DIR", tmp)))
    if args.levels:
        levels(results)
    gil(results)
    results["loadavg_after"] = os.getloadavg()
    b, s = results["big_blocks"], results["small_records"]
    print(f"big blocks ({b['bytes'] >> 20} MiB, 256 KiB blocks, level 1, 4 MiB chunks, "
          "results consumed as produced):")
    print(f"  native frame+hash+compress {b['native_MBps']:8.0f} MB/s   isal_zlib.compress "
          f"{b['isal_zlib_MBps']:8.0f} MB/s   RATIO {b['ratio']:.2f} (target >= 0.90)")
    print(f"  one call, all results kept {b['native_one_call_MBps']:8.0f} MB/s   isal_zlib kept    "
          f"{b['isal_zlib_kept_MBps']:8.0f} MB/s   ratio {b['ratio_one_call']:.2f}")
    print(f"  output bytes: native {b['native_out_bytes']}, isal_zlib {b['isal_zlib_out_bytes']}")
    print(f"small records ({s['records']} x 50 B keys, 100-300 B values), M records/s on one core:")
    print(f"  frame+hash {s['frame_only_Mrps']:.2f}   + stored (level 0) {s['level0_Mrps']:.2f}   "
          f"+ ISA-L level 1 {s['level1_Mrps']:.2f} (target >= 2)   "
          f"ISA-L level 1 alone on the payloads {s['isal1_engine_only_Mrps']:.2f}")
    if "lmdb_scan" in results:
        m = results["lmdb_scan"]
        print(f"LMDB scan ({m['records']} records), CPU s: C cursor loop {m['c_loop_s']:.3f}, "
              f"C loop copying+hashing {m['c_touch_loop_s']:.3f}, LmdbRangeScanner frame-only "
              f"{m['scan_frame_only_s']:.3f}, level 0 {m['scan_level0_s']:.3f}")
        print(f"  RATIO vs C loop: frame-only {m['ratio_frame_only']:.2f}, level 0 "
              f"{m['ratio_level0']:.2f} (target >= 0.8); vs copying C loop "
              f"{m['ratio_frame_only_vs_touch']:.2f}")
    for level, r in results.get("levels", {}).items():
        print(f"  level {level} {r['engine']:7} {r['MBps']:7.0f} MB/s  ratio {r['ratio']:.3f}")
    print(f"GIL: two threads' deflate_body take {results['gil']['two_threads_over_one_call']:.2f}x "
          "one call (wall)")
    print(f"load average before/after: {results['loadavg']} / {results['loadavg_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
