"""Peak memory of restore, verify (deep) and ls of a small and an 8x larger archive, two source
trees interleaved (issue 21: the 8x archive's peak within 10% of the small one's; and the
same CPU as the baseline tree). Archives are made beforehand (memory_bound.py's stores, e.g.
2 GiB and 16 GiB of 256 KiB blocks backed up with --paged-index always); each operation is
a fresh CLI process of each tree (`PYTHONPATH=TREE/src`), measured as memory_bound.py
measures (peak RSS from wait4(2), anonymous peak sampled from /proc every 10 ms, wall and
CPU seconds). Rounds alternate which tree goes first.

    python benchmarks/readmem_ab.py --small A1 --large A8 --old OLDTREE --new NEWTREE
        [--rounds 2] [--ops restore,verify,ls] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_bound import cli_rss  # noqa: E402

ARGS = {"verify": ["verify"], "ls": ["ls"]}


def run(tree: str, op: str, archive: str, workdir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(tree) / "src"))
    dst = workdir / "dst"
    args = (["restore", archive, f"lmdb:{dst}"] if op == "restore"
            else [*ARGS[op], archive])
    try:
        rss, anon, wall, cpu = cli_rss(args, env)
    finally:
        shutil.rmtree(dst, ignore_errors=True)
        for p in workdir.glob("dst*"):
            p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p, True)
    return {"rss": rss, "anon": anon, "wall_s": wall, "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", required=True)
    ap.add_argument("--large", required=True)
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ops", default="restore,verify,ls")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    ops = a.ops.split(",")
    trees = {"old": a.old, "new": a.new}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dsbackup-readmem-", dir=a.dir) as d:
        for rnd in range(a.rounds):
            order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
            for op in ops:
                for size, arc in (("small", a.small), ("large", a.large)):
                    for name in order:
                        r = run(trees[name], op, arc, Path(d))
                        r.update(round=rnd, op=op, size=size, tree=name,
                                 load=os.getloadavg()[0])
                        rows.append(r)
                        print(f"round {rnd} {op:7} {size:5} {name}: rss "
                              f"{r['rss'] / 2**20:.1f} MiB (anon {r['anon'] / 2**20:.1f}), "
                              f"wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, load "
                              f"{r['load']:.1f}", flush=True)
    summary: dict = {}
    for op in ops:
        for name in trees:
            med = {}
            for size in ("small", "large"):
                sel = [r for r in rows if (r["op"], r["tree"], r["size"]) == (op, name, size)]
                med[size] = {k: statistics.median(r[k] for r in sel)
                             for k in ("rss", "anon", "wall_s", "cpu_s")}
            summary[f"{op}/{name}"] = {**med, "ratio": med["large"]["rss"] / med["small"]["rss"],
                                       "ratio_anon": med["large"]["anon"] / med["small"]["anon"]}
            s = summary[f"{op}/{name}"]
            print(f"{op:7} {name}: large/small peak RSS {s['ratio']:.3f} (anon "
                  f"{s['ratio_anon']:.3f}); medians small {med['small']['rss'] / 2**20:.1f} / "
                  f"large {med['large']['rss'] / 2**20:.1f} MiB; CPU s small "
                  f"{med['small']['cpu_s']:.2f} large {med['large']['cpu_s']:.2f}")
        for size in ("small", "large"):
            per = []
            for rnd in range(a.rounds):
                cpu = {r["tree"]: r["cpu_s"] for r in rows
                       if (r["op"], r["size"], r["round"]) == (op, size, rnd)}
                per.append(cpu["new"] / cpu["old"])
            summary[f"{op}/{size}/cpu_new_over_old"] = per
            print(f"{op:7} {size}: CPU new/old per round {', '.join(f'{x:.3f}' for x in per)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"small": a.small, "large": a.large, "old": a.old, "new": a.new,
                       "rows": rows, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
