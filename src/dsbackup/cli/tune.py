"""`dsbackup tune SOURCE`: measure compression levels and chunk sizes on a sample of the store
and recommend settings for a goal or a budget."""

from __future__ import annotations

import argparse
import os
import sys

from dsbackup import DEFAULT_CHUNK_TARGETS, GOALS, TuneResult, plot, tune
from dsbackup.cli._common import add_json_flag, emit_json, human_bytes
from dsbackup.errors import EXIT_WARNING, ConfigError

COMMAND = "tune"
HELP = "recommend a compression level and chunk size from measurements on a sample"


def _int_list(text: str) -> list[int]:
    """Numbers and ranges (`0-3,6`); an empty list, a range running backwards or a value
    below 1 (`--chunk-targets 0`: a mean chunk of 0 KiB) is a usage error like a typo."""
    try:
        out = []
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(hi) < int(lo):
                    raise ValueError(part)
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
        if not out:
            raise ValueError(text)
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0-3,6: {text!r}") from None


def _positive_list(text: str) -> list[int]:
    out = _int_list(text)
    if min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers like 256,1024: {text!r}")
    return out


def _positive(text: str) -> float:
    """A finite number above 0 (MB, seconds)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):  # nan too
        raise argparse.ArgumentTypeError(f"expected a positive number: {text!r}")
    return value


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, OverflowError):  # OverflowError: infG
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 2G: {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="datastore URI or path (as for `dsbackup backup`)")
    p.add_argument("--sample-mb", type=_positive, default=64,
                   help="MB sampled across the key space for the measurements (default 64; at least "
                   "148 when the backup would run parallel workers)")
    p.add_argument("--grid-mb", type=_positive, default=8,
                   help="MB of the sample each level/chunk-size candidate compresses (default 8)")
    p.add_argument("--levels", type=_int_list, default=list(range(10)),
                   help="compression levels to try, e.g. 0-3,6 (default 0-9)")
    p.add_argument("--chunk-targets", type=_positive_list, default=None, metavar="KIB,...",
                   help="mean chunk sizes to try in KiB (default "
                   + ",".join(str(t >> 10) for t in DEFAULT_CHUNK_TARGETS) + ")")
    p.add_argument("--workers", type=int, default=None, help="workers of the backup (default: CPUs)")
    p.add_argument("--goal", choices=GOALS, default="balanced",
                   help="what to optimise (default balanced)")
    p.add_argument("--max-seconds", type=_positive, default=None,
                   help="budget: the backup must take at most this long (projected)")
    p.add_argument("--max-bytes", type=_size, default=None,
                   help="budget: the archive must be at most this large, e.g. 40G (projected)")
    p.add_argument("--reps", type=int, default=3,
                   help="backups per calibration point; medians are used (default 3)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw throughput against ratio with the Pareto front (needs matplotlib)")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    if args.plot:  # fail before the measurements, not after them
        _check_plot_path(args.plot)
    if args.reps < 1:
        raise ConfigError("--reps must be at least 1")
    targets = ([t << 10 for t in args.chunk_targets] if args.chunk_targets
               else list(DEFAULT_CHUNK_TARGETS))
    res = tune(args.source, sample_mb=args.sample_mb, grid_mb=args.grid_mb, levels=args.levels,
               chunk_targets=targets, workers=args.workers, goal=args.goal,
               max_seconds=args.max_seconds, max_bytes=args.max_bytes, reps=args.reps)
    if args.plot:
        plot(res, args.plot)
    if args.json:
        emit_json(COMMAND, {"ok": res.recommended is not None, "tune": res.to_json()})
    else:
        print_table(res)
    return 0 if res.recommended is not None else EXIT_WARNING


# what matplotlib's Agg canvas writes (FigureCanvasBase.get_supported_filetypes())
PLOT_FORMATS = ("eps", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg", "svgz",
                "tif", "tiff", "webp")


def _check_plot_path(path: str) -> None:
    """The directory exists, the suffix is an image format, matplotlib is installed."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"--plot {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"--plot {path}: is a directory")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--plot {path}: directory {parent} is not writable")
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ConfigError(f"--plot {path}: not an image suffix ({suffix or 'none'}); use one of "
                          + ", ".join("." + f for f in PLOT_FORMATS))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which is not installed: "
                          "pip install 'dsbackup[plot]'") from None


def print_table(res: TuneResult) -> None:
    out = sys.stdout
    print(f"{res.source}: {res.records} records, {human_bytes(res.raw_bytes)}; sampled "
          f"{res.sample_records} records ({human_bytes(res.sample_bytes)}) in "
          f"{res.duration_s:.1f} s; {res.workers} workers", file=out)
    print(f"{'level':>5} {'engine':7} {'chunk':>8} {'max':>7} {'core MB/s':>9} {'ratio':>6} "
          f"{'MB/s':>7} {'proj. time':>10} {'proj. size':>11}", file=out)
    for r in sorted(res.rows, key=lambda r: (r.level, r.chunk_target)):
        mark = "*" if r is res.recommended else ("p" if r.pareto else " ")
        print(f"{r.level:>5} {r.engine:7} {human_bytes(r.chunk_target):>8} "
              f"{human_bytes(r.chunk_max_bytes):>7} {r.core_mb_s:>9.0f} {r.ratio:>6.3f} "
              f"{r.projected_mb_s:>7.0f} {r.projected_seconds:>9.1f}s "
              f"{human_bytes(r.projected_bytes):>11} {mark}", file=out)
    print("p: on the Pareto front (no setting is both faster and smaller); *: recommended",
          file=out)
    if res.recommended is None:
        print(f"no recommendation: {res.reason}", file=out)
    else:
        print(f"recommended ({res.reason}): dsbackup backup {' '.join(res.options())} ...",
              file=out)
