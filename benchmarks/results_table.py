"""Render a compare.py results file as a Markdown table (for docs/PERFORMANCE.md).

Usage: python benchmarks/results_table.py benchmarks/results/compare-....json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def markdown(doc: dict) -> str:
    lines = [
        f"Measured {doc['created']} on {doc['cpus']} CPUs (Python {doc['python']}), scale "
        f"{doc['scale']}, median of {doc['runs']} interleaved runs, warm page cache; "
        f"load average at the end {', '.join(f'{x:.1f}' for x in doc['loadavg_end'])}."
        + (" Durable rows: every row that writes ends with what it wrote fsynced, timed."
           if doc.get("durable") else
           " Not durable: the file-level rows' writes were left in the page cache."),
        "",
        "| data set | op | tool | seconds | MB/s | time / ours | size MB | peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        if r["error"]:
            lines.append(f"| {r['dataset']} | {r['op']} | {r['tool']} | failed | | | | |")
            continue
        size = f"{r['compressed_bytes'] / 1e6:.1f}" if r["compressed_bytes"] else "-"
        tool = r["tool"].replace("|", "\\|")  # a literal | inside a Markdown table cell
        tool = f"**{tool}**" if r["ours"] else tool
        lines.append(f"| {r['dataset']} | {r['op']} | {tool} | {r['seconds']:.2f} | "
                     f"{r['MB_s']:.0f} | {r['x_ours']:.2f} | {size} | "
                     f"{r['peak_rss_mib']:.0f} |")
    lines.append("")
    for name, d in doc["datasets"].items():
        lines.append(f"- {name}: {d['records']} records, {d['raw_bytes'] / 1e6:.1f} MB of keys "
                     "and values")
    if doc["skipped"]:
        lines.append("- skipped: " + "; ".join(f"{s['dataset']} {s['tool']} ({s['reason']})"
                                               for s in doc["skipped"]))
    for name, d in doc.get("ceiling", {}).items():
        parts = [f"{d[k]['of_ceiling']:.2f} of {d[k]['tool'].removesuffix(' (ceiling)')} "
                 f"(per round {', '.join(f'{x:.2f}' for x in d[k]['of_ceiling_per_round'])})"
                 for k in ("processes", "threads", "x1") if k in d]
        lines.append(f"- {name} backup against the ISA-L ceilings (their time / ours): "
                     + "; ".join(parts))
    tc = doc["datasets"].get("blocks", {}).get("tune_check")
    if tc:
        lines.append(
            f"- `dsbackup tune` on blocks (goal {tc['goal']}) recommended "
            f"`{' '.join(tc['options'])}` and projected {tc['projected_seconds']:.2f} s / "
            f"{tc['projected_bytes'] / 1e6:.1f} MB; real backups with it took "
            f"{tc['actual_seconds']:.2f} s (best of {len(tc['actual_seconds_all'])}; all: "
            f"{', '.join(f'{x:.2f}' for x in tc['actual_seconds_all'])}) / "
            f"{tc['actual_bytes'] / 1e6:.1f} MB: error {tc['time_error']:+.1%} time against "
            f"the best run, {tc['size_error']:+.1%} size (bound: +-25%)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())), end="")
