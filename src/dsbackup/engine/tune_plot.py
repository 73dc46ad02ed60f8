"""tune's chart: projected throughput against compression ratio, the Pareto front marked."""

from __future__ import annotations

import os

from dsbackup.engine.tune_model import TuneResult
from dsbackup.errors import ConfigError

__all__ = ["plot"]


def plot(result: TuneResult, path: str | os.PathLike[str]) -> None:
    """Projected throughput against compression ratio, Pareto front marked (needs matplotlib:
    ``pip install 'dsbackup[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which is not installed: "
                          "pip install 'dsbackup[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = result.rows
    ax.scatter([r.ratio for r in rows], [r.projected_mb_s for r in rows], s=18, c="0.6",
               label="candidates")
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.ratio)
    ax.plot([r.ratio for r in front], [r.projected_mb_s for r in front], "o-", c="C0",
            label="Pareto front")
    for r in front:
        ax.annotate(f"L{r.level}/{r.chunk_target >> 10}K", (r.ratio, r.projected_mb_s),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    if result.recommended is not None:
        r = result.recommended
        ax.scatter([r.ratio], [r.projected_mb_s], s=120, facecolors="none", edgecolors="C3",
                   linewidths=2, label=f"recommended ({result.goal})")
    ax.set_xlabel("compression ratio (raw / archive)")
    ax.set_ylabel("projected backup throughput (MB/s)")
    ax.set_title(f"dsbackup tune: {result.records} records, "
                 f"{result.raw_bytes / 1e6:.0f} MB, {result.workers} workers", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)
