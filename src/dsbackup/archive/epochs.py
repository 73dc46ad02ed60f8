"""Which run of a resumed backup wrote a member (docs/FORMAT.md §11.4, §11.5).

Each run of a backup has an epoch: 0 for the first, then 1, 2 ... for each `--resume`, listed
in the summary's `resumed` entries (`epoch`, `from_seq`) in order. A resumed run rewrites
everything from its `from_seq` on, so chunk `seq` (with its catalog) was written by the last
run in that list whose `from_seq` <= seq, and in an encrypted archive it is sealed under that
run's epoch; so is an index page, by the chunk it starts with (a resumed run of a paged archive
starts at a page boundary). The index entries of an encrypted archive record the same epoch.
"""

from __future__ import annotations

from typing import Any

from dsbackup.errors import IntegrityError

MAX_EPOCH = (1 << 24) - 1  # the nonce's epoch field is 24 bits


def resumed_runs(summary: dict[str, Any], where: str) -> list[tuple[int, int]]:
    """(epoch, from_seq) of every resumed run, in order; [] for an archive written in one
    run. IntegrityError when the list is malformed (its epochs must increase from 1)."""
    raw = summary.get("resumed")
    if raw is None:
        return []
    out: list[tuple[int, int]] = []
    ok = isinstance(raw, list)
    for e in raw if ok else []:
        epoch = e.get("epoch") if isinstance(e, dict) else None
        start = e.get("from_seq") if isinstance(e, dict) else None
        if (type(epoch) is not int or type(start) is not int or start < 0
                or not (out[-1][0] if out else 0) < epoch <= MAX_EPOCH):
            ok = False
            break
        out.append((epoch, start))
    if not ok:
        raise IntegrityError(f"{where}: summary's 'resumed' list is malformed",
                             part="summary")
    return out


def epoch_at(runs: list[tuple[int, int]], seq: int) -> int:
    """The epoch of the run that wrote chunk `seq` (and its catalog)."""
    epoch = 0
    for e, start in runs:
        if start <= seq:
            epoch = e
    return epoch
