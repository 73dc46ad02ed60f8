"""tune's sample of a store: one keys-and-sizes pass (``survey``) gives its size and keys at
evenly spaced byte offsets; ``draw_sample`` reads a contiguous run of records from each, so
chunks and compression windows look like the real ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Sample", "Survey", "draw_sample", "survey"]


@dataclass
class Survey:
    records: int
    raw_bytes: int  # key + value bytes
    starts: list[bytes]  # keys at evenly spaced byte offsets (stratum starts)


def survey(ds: Any, strata: int) -> Survey:
    """One keys-and-sizes pass: totals and up to `strata` evenly spaced start keys."""
    step = 1  # bytes between marks; doubles whenever there are more than 4 x strata marks
    marks: list[tuple[int, bytes]] = []  # (byte offset, key) at multiples of `step`
    n = total = 0
    next_mark = 0
    for keys, sizes in ds.scan_key_sizes():
        for k, s in zip(keys, sizes):
            if total >= next_mark:
                marks.append((total, k))
                next_mark = (total // step + 1) * step
                if len(marks) > 4 * strata:
                    step *= 2  # keep every other mark: the spacing doubles
                    marks = marks[::2]
                    next_mark = (total // step + 1) * step
            n += 1
            total += len(k) + s
    if not marks:
        return Survey(0, 0, [])
    want = [total * i // strata for i in range(strata)]
    starts: list[bytes] = []
    j = 0
    for w in want:
        while j + 1 < len(marks) and marks[j + 1][0] <= w:
            j += 1
        if not starts or marks[j][1] > starts[-1]:
            starts.append(marks[j][1])
    return Survey(n, total, starts)


@dataclass
class Sample:
    runs: list[tuple[list[bytes], list[bytes]]]  # contiguous key ranges, in key order

    @property
    def records(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    @property
    def raw_bytes(self) -> int:
        return sum(sum(map(len, k)) + sum(map(len, v)) for k, v in self.runs)

    def part(self, fraction: float) -> Sample:
        """The first `fraction` of every run (still stratified)."""
        out = []
        for k, v in self.runs:
            m = max(1, round(len(k) * fraction))
            out.append((k[:m], v[:m]))
        return Sample(out)

    def spread(self, max_bytes: int) -> Sample:
        """Evenly spaced whole runs, together at most about `max_bytes`."""
        total = self.raw_bytes
        if total <= max_bytes or len(self.runs) <= 1:
            return self
        keep = max(1, round(len(self.runs) * max_bytes / total))
        idx = sorted({i * len(self.runs) // keep for i in range(keep)})
        return Sample([self.runs[i] for i in idx])


def draw_sample(ds: Any, sv: Survey, sample_bytes: int) -> Sample:
    """Contiguous runs of about sample_bytes / strata bytes from each stratum start."""
    if not sv.starts:
        return Sample([])
    per_run = max(1, sample_bytes // len(sv.starts)) if sv.raw_bytes > sample_bytes else None
    runs = []
    bounds = list(sv.starts[1:]) + [None]
    for start, end in zip(sv.starts, bounds):
        keys: list[bytes] = []
        values: list[bytes] = []
        got = 0
        batch = min(per_run or 8 << 20, 8 << 20)
        it = ds.scan_batches(start, end, max_bytes=max(4096, batch))
        try:
            for bk, bv in it:
                for k, v in zip(bk, bv):
                    keys.append(k)
                    values.append(v)
                    got += len(k) + len(v)
                    if per_run is not None and got >= per_run:
                        break
                if per_run is not None and got >= per_run:
                    break
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if keys:
            runs.append((keys, values))
    return Sample(runs)
