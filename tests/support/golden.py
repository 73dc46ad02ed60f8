"""Golden archives: small deterministic stores backed up by fixed recipes, so that a refactor of
the backup engine can be checked byte for byte (tests/engine/test_golden.py).

`build(outdir)` runs every recipe in a fresh interpreter (one subprocess) and leaves the archives
in `outdir`, named as in ARCHIVES. What would differ between two runs is fixed there:

- the clock and the process statistics: tests/support/golden_clock/sitecustomize.py freezes
  `datetime.now()`, `time.perf_counter()` and `resource.getrusage()` in the generator and in the
  parallel scan's fork server;
- the encryption's randomness: `dsbackup.archive.crypto._random` returns fixed bytes (the data
  key, archive id and nonce prefix), and the key is a raw key (no scrypt salt);
- the source's path, which the manifest records (`source.uri`, absolute): stores live in the
  generator's working directory and are named by relative URIs, and the relative one is
  recorded (an opened store's `uri` is set to it; a native LMDB incremental's is, by
  `_relative_lmdb_uris`);
- a Kubo node's file modes and mtimes are set to fixed values.

One field stays timing-dependent: the parallel scan's summary `spilled_chunks` (the test
compares that archive without it).

Regenerate the committed archives (only when the format is meant to change):
    python tests/support/golden.py tests/fixtures/golden
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "golden"

ARCHIVES = [
    "full.tar.gz",           # LMDB, 1 worker, level 1
    "full-w2.tar.gz",        # the same store, 2 compression threads (central scan)
    "full-parallel.tar.gz",  # the same store, 2 worker processes (parallel scan)
    "exclude.tar.gz",        # --exclude, zlib level 6
    "incr.tar.gz",           # incremental of full.tar.gz: LMDB URI (native scanner)
    "incr-object.tar.gz",    # incremental of full.tar.gz: an opened store (any backend)
    "full-catalog.tar.gz",   # --include-metadata
    "incr-catalog.tar.gz",   # incremental of full-catalog.tar.gz with its catalog
    "enc-full.tar.gz",       # encrypted, fixed data key
    "enc-incr.tar.gz",       # encrypted incremental of enc-full.tar.gz
    "flatfs-full.tar.gz",    # a flatfs blockstore (content-hash keys)
    "flatfs-incr.tar.gz",    # its incremental (planned from keys and sizes)
    "kubo.tar.gz",           # a Kubo repository: records and the node member
    "go.tar.gz",             # the Go tool's format
]

FIXED_RANDOM = {16: b"\x11" * 16, 32: b"\x22" * 32, 12: b"\x44" * 12}
RAW_KEY = b"\x5a" * 32
FIXED_MTIME_NS = 1_700_000_000_123_456_789


def build(outdir: Path) -> list[Path]:
    """Write every golden archive into `outdir` (which must exist); their paths."""
    work = Path(tempfile.mkdtemp(prefix="golden-work-", dir=outdir.parent))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "golden_clock"), str(ROOT / "src")])
    env["DSBACKUP_GOLDEN_CLOCK"] = "1"
    env["DSBACKUP_PRESTART"] = "0"
    try:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--inside",
                        str(outdir.resolve())], cwd=work, env=env, check=True, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [outdir / name for name in ARCHIVES]


# -- inside the generator's process (cwd: the stores' directory) ------------------------------


def _records(seed: int) -> dict[bytes, bytes]:
    """~330 records: text that compresses, blocks half random, random values, pins."""
    from dsbackup import datasets

    rng = random.Random(seed)
    recs = dict(datasets.iter_small(200, seed=seed))
    recs.update(datasets.iter_blocks(30, seed=seed + 1, block_size=1024))
    for i in range(40):
        recs[b"/rand/%04d" % i] = rng.randbytes(rng.randrange(0, 600))
    recs.update(datasets.iter_pins(60, seed=seed + 2))
    return recs


def _changed(recs: dict[bytes, bytes], seed: int) -> dict[bytes, bytes]:
    """`recs` with 3 values changed, 3 keys deleted and 3 added."""
    rng = random.Random(seed)
    out = dict(recs)
    keys = sorted(out)
    for k in rng.sample(keys, 3):
        out[k] = rng.randbytes(80)
    for k in rng.sample(sorted(out), 3):
        del out[k]
    for i in range(3):
        out[b"/records/%012d/new" % rng.randrange(10**6)] = b"new value %d " % i * 5
    return out


def _opened(uri: str):
    """The store at the relative `uri`, opened read-only, recording that relative URI."""
    from dsbackup.datastores import open_datastore

    ds = open_datastore(uri, readonly=True)
    ds.uri = uri
    return ds


def _relative_lmdb_uris() -> None:
    """A native LMDB incremental records its source's absolute path (engine/incremental.py
    _open_uri); the generator's stores are recorded by the relative URI it gives, as an
    opened store's are (`_opened`), so the archives do not depend on where it runs."""
    import dataclasses

    from dsbackup.engine import incremental

    real = incremental._open_uri

    def relative(uri: str):
        return dataclasses.replace(real(uri), uri=uri)

    incremental._open_uri = relative


def _backup(out: Path, name: str, source, *, parent: str | None = None, fmt: str = "dsbackup",
            **config) -> None:
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    cfg = BackupConfig(**{"workers": 1, "chunk_size": 16, **config})
    owned = isinstance(source, str) and parent is None
    ds = _opened(source) if owned else source
    try:
        BackupManager(cfg).create_backup(ds, out / name, format=fmt,
                                         parent=None if parent is None else out / parent)
    finally:
        if owned:
            ds.close()


def _flatfs(path: str, blocks: dict[bytes, bytes]) -> None:
    from dsbackup.datastores import open_datastore

    ds = open_datastore(f"flatfs:{path}")
    try:
        for k, v in sorted(blocks.items()):
            ds.put(k[len(b"/blocks"):], v)  # a Kubo blockstore's keys: /CIQ...
    finally:
        ds.close()


def _kubo_repo(path: Path) -> None:
    """The Kubo fixture repo with a keystore, every mode and mtime fixed."""
    shutil.copytree(ROOT / "tests" / "fixtures" / "kubo-v16-repo", path)
    ks = path / "keystore"
    ks.mkdir(exist_ok=True)
    (ks / "key_mykey").write_bytes(b"\x08\x01\x12\x40" + bytes(range(64)))
    for p in sorted(path.rglob("*"), reverse=True) + [path]:
        p.chmod(0o700 if p.is_dir() else 0o600)
        os.utime(p, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))


def _inside(out: Path) -> None:
    import datetime

    assert datetime.datetime.now().year == 2026, "the golden clock is not installed"
    from dsbackup import datasets
    from dsbackup.archive import crypto
    from dsbackup.engine import backup

    crypto._random = lambda n: FIXED_RANDOM[n]
    _relative_lmdb_uris()
    a = _records(1)
    b = _changed(a, 2)
    datasets.write_lmdb("lmdb-a", iter(a.items()))
    datasets.write_lmdb("lmdb-b", iter(b.items()))

    _backup(out, "full.tar.gz", "lmdb:lmdb-a")
    _backup(out, "full-w2.tar.gz", "lmdb:lmdb-a", workers=2)
    saved, backup.PARALLEL_MIN_BYTES = backup.PARALLEL_MIN_BYTES, 0
    try:
        _backup(out, "full-parallel.tar.gz", "lmdb:lmdb-a", workers=2)
    finally:
        backup.PARALLEL_MIN_BYTES = saved
    _backup(out, "exclude.tar.gz", "lmdb:lmdb-a", exclude_patterns=["/pins/**", "/rand/*"],
            compression_level=6)
    _backup(out, "incr.tar.gz", "lmdb:lmdb-b", parent="full.tar.gz", workers=2)
    ds = _opened("lmdb:lmdb-b")
    try:
        _backup(out, "incr-object.tar.gz", ds, parent="full.tar.gz")
    finally:
        ds.close()
    _backup(out, "full-catalog.tar.gz", "lmdb:lmdb-a", include_metadata=True)
    _backup(out, "incr-catalog.tar.gz", "lmdb:lmdb-b", parent="full-catalog.tar.gz",
            include_metadata=True)
    key = crypto.KeyMaterial(key=RAW_KEY)
    _backup(out, "enc-full.tar.gz", "lmdb:lmdb-a", encryption=key)
    _backup(out, "enc-incr.tar.gz", "lmdb:lmdb-b", parent="enc-full.tar.gz", encryption=key)

    blocks = dict(datasets.iter_blocks(60, seed=7, block_size=1024))
    _flatfs("flatfs-a", blocks)
    rng = random.Random(8)
    for k in rng.sample(sorted(blocks), 2):
        del blocks[k]
    blocks.update(datasets.iter_blocks(2, seed=9, block_size=1024))
    _flatfs("flatfs-b", blocks)
    _backup(out, "flatfs-full.tar.gz", "flatfs:flatfs-a", chunk_size=8)
    ds = _opened("flatfs:flatfs-b")
    try:
        _backup(out, "flatfs-incr.tar.gz", ds, parent="flatfs-full.tar.gz", chunk_size=8)
    finally:
        ds.close()

    _kubo_repo(Path("kubo-repo"))
    _backup(out, "kubo.tar.gz", "kubo:kubo-repo")
    _backup(out, "go.tar.gz", "lmdb:lmdb-a", fmt="go")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        _inside(Path(sys.argv[2]))
    elif len(sys.argv) == 2:
        target = Path(sys.argv[1])
        target.mkdir(parents=True, exist_ok=True)
        for p in build(target):
            print(f"{p}: {p.stat().st_size} bytes")
    else:
        sys.exit("usage: golden.py OUTDIR")
