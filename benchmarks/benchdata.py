"""The benchmark data sets, generated from a seed by dsbackup.datasets and cached on disk.

- ``blocks``: 4096 x 256 KiB values (half random bytes, half Zipf word text) under
  ``/blocks/CIQ<52 base32 chars>``, as an LMDB store and as a go-ds-flatfs directory (the
  flatfs copy holds the keys without the ``/blocks`` prefix, as Kubo mounts it).
- ``small``: 2,000,000 records with ~50-byte keys and 100-300-byte semi-compressible values,
  as an LMDB store.

``DSBACKUP_BENCH_SCALE`` (default 1.0) scales the record counts (0.01 for a smoke run).
The cache lives in ``DSBACKUP_BENCH_DIR`` (default ``$TMPDIR/dsbackup-bench``); a data set is
rebuilt only when its directory lacks the completion marker for the same count and seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dsbackup import datasets

BLOCKS_FULL = 4096
SMALL_FULL = 2_000_000
SEED = 1


def scale() -> float:
    return float(os.environ.get("DSBACKUP_BENCH_SCALE", "1"))


def scaled(n: int, minimum: int = 1, factor: float | None = None) -> int:
    return max(minimum, int(n * (scale() if factor is None else factor)))


def cache_dir() -> Path:
    d = Path(os.environ.get("DSBACKUP_BENCH_DIR")
             or Path(tempfile.gettempdir()) / "dsbackup-bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass(frozen=True)
class Dataset:
    name: str
    uri: str
    path: Path
    records: int
    raw_bytes: int  # key + value bytes


def _build(path: Path, fill, outside: bool = False) -> tuple[int, int]:
    """``fill(path)`` once; a marker records that it completed. With ``outside`` the marker
    lies beside the directory, not in it (a flatfs store must hold only its own files, or a
    backup of it refuses the stranger); a marker left inside by an earlier version is moved."""
    inner = path / ".dsbackup-bench-complete"
    marker = path.parent / f".{path.name}.complete" if outside else inner
    if outside and not marker.is_file() and inner.is_file():
        marker.write_text(inner.read_text())
        inner.unlink()
    if marker.is_file():
        n, nbytes = (int(x) for x in marker.read_text().split())
    else:
        marker.unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        n, nbytes = fill(path)
        marker.write_text(f"{n} {nbytes}\n")
    return n, nbytes


def blocks_lmdb(count: int | None = None, seed: int = SEED, root: Path | None = None) -> Dataset:
    count = scaled(BLOCKS_FULL, 4) if count is None else count
    path = (root or cache_dir()) / f"blocks-lmdb-{count}-{seed}"

    def fill(p: Path) -> tuple[int, int]:
        return datasets.write_lmdb(str(p), datasets.iter_blocks(count, seed))

    n, nbytes = _build(path, fill)
    return Dataset("blocks", f"lmdb:{path}", path, n, nbytes)


def blocks_flatfs(count: int | None = None, seed: int = SEED, root: Path | None = None,
                  ) -> Dataset:
    """The same blocks in a flatfs directory (next-to-last/2), keys ``/CIQ...``."""
    from dsbackup.datastores.flatfs import FlatfsDatastore

    count = scaled(BLOCKS_FULL, 4) if count is None else count
    path = (root or cache_dir()) / f"blocks-flatfs-{count}-{seed}"

    def fill(p: Path) -> tuple[int, int]:
        ds = FlatfsDatastore(p, sync=False)
        n = nbytes = 0
        keys: list[bytes] = []
        values: list[bytes] = []
        try:
            for k, v in datasets.iter_blocks(count, seed):
                keys.append(k[len(b"/blocks"):])
                values.append(v)
                if len(keys) == 64:
                    ds.put_many(keys, values)
                    n += len(keys)
                    nbytes += sum(map(len, keys)) + sum(map(len, values))
                    keys, values = [], []
            if keys:
                ds.put_many(keys, values)
                n += len(keys)
                nbytes += sum(map(len, keys)) + sum(map(len, values))
        finally:
            ds.close()
        return n, nbytes

    n, nbytes = _build(path, fill, outside=True)
    return Dataset("blocks-flatfs", f"flatfs:{path}", path, n, nbytes)


def small_lmdb(count: int | None = None, seed: int = SEED + 1, root: Path | None = None,
               ) -> Dataset:
    count = scaled(SMALL_FULL, 1000) if count is None else count
    path = (root or cache_dir()) / f"small-lmdb-{count}-{seed}"

    def fill(p: Path) -> tuple[int, int]:
        return datasets.write_lmdb(str(p), datasets.iter_small(count, seed), sort=False,
                                   batch=65536)

    n, nbytes = _build(path, fill)
    return Dataset("small", f"lmdb:{path}", path, n, nbytes)
