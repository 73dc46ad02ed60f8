"""A go-ds-flatfs store written straight to files (next-to-last/2, CID-like base32 names),
fast enough for a few hundred thousand files in a test."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
SHARDING = "/repo/flatfs/shard/v1/next-to-last/2\n"


def random_names(n: int, seed: int = 5, prefix: str = "CIQ", length: int = 30) -> list[str]:
    rnd = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(prefix + "".join(rnd.choices(ALPHABET, k=length)))
    return sorted(out)


def write_store(root: Path, names: list[str],
                value: Callable[[str], bytes] | None = None) -> Path:
    """``root`` as a flatfs store holding ``names`` (values ``value(name)``; empty files
    without it); its SHARDING file, no diskUsage.cache."""
    root.mkdir(parents=True)
    (root / "SHARDING").write_text(SHARDING)
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for name in names:
        shard = name[-3:-1]
        if shard not in made:
            (root / shard).mkdir(exist_ok=True)
            made.add(shard)
        fd = os.open(f"{root}/{shard}/{name}.data", flags, 0o644)
        try:
            if value is not None:
                os.write(fd, value(name))
        finally:
            os.close(fd)
    return root
