"""The flatfs incremental of a store over ``max_names`` keys, bucket by bucket
(engine/flatfs_buckets.py): run as the CLI with a frozen clock, its archive is byte for byte
the one the in-memory listing gives, for stores unchanged, grown, shrunk, with a changed
value under a name that is not a hash, and changed at the parent's chunk edges, with buckets
of a few names (every chunk and boundary across bucket edges); it restores exactly; the
file audit, --skip-foreign and --no-trust-content-keys work over the spilled listing; the
spill directory is always gone."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.datastores.flatfs_spill import SPILL_PREFIX
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.flatfs_buckets import Window
from dsbackup.engine.flatfs_incremental import FlatfsIncremental

GOLDEN_CLOCK = Path(__file__).resolve().parents[1] / "support" / "golden_clock"
OPTS = ["--chunk-size", "8", "--chunk-max-bytes", "4096", "--workers", "1"]
CFG = dict(chunk_size=8, chunk_max_bytes=4096, workers=1)
BIG = 10_000_000  # max_names: the in-memory listing
SMALL = (40, 6)  # max_names: ~20 names a bucket; 3 (every chunk across bucket edges)


def hash_name(rng: random.Random) -> bytes:
    """A trusted key: the base32 of a sha2-256 multihash (the value need not match)."""
    return b"/" + base64.b32encode(b"\x12\x20" + rng.randbytes(32)).rstrip(b"=")


def value(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(50, 1200))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """2,000 blocks and 30 records under names that are not hashes, and the full backup."""
    d = tmp_path_factory.mktemp("buckets")
    rng = random.Random(21)
    recs = {hash_name(rng): value(rng) for _ in range(2000)}
    recs.update({b"/NOTAHASH%03d" % i: value(rng) for i in range(30)})
    with open_datastore(f"flatfs:{d / 'src'}", sync=False) as ds:
        ds.put_many(sorted(recs), [recs[k] for k in sorted(recs)])
    BackupManager(BackupConfig(**CFG)).create_backup(f"flatfs:{d / 'src'}", d / "p.tar.gz")
    return d


def parent_edges(parent: Path) -> list[tuple[bytes, bytes]]:
    with ArchiveReader(parent) as r:
        return [(e.first_key, e.last_key) for e in r.index.entries()]


def change(root: Path, parent: Path, how: str) -> None:
    rng = random.Random(how)
    with open_datastore(f"flatfs:{root}", sync=False) as ds:
        keys = sorted(k for ks, _ in ds.scan_batches() for k in ks)
        hashes = [k for k in keys if not k.startswith(b"/NOTAHASH")]
        if how == "grown":  # 1 % new
            new = {hash_name(rng): value(rng) for _ in range(len(keys) // 100)}
            ds.put_many(sorted(new), [new[k] for k in sorted(new)])
        elif how == "shrunk":
            for k in [hashes[0], hashes[-1], *rng.sample(hashes, 25)]:
                ds.delete(k)
        elif how == "not-a-hash":  # a changed value under a name the planner cannot trust
            ds.put(b"/NOTAHASH007", b"changed" * 50)
            ds.delete(b"/NOTAHASH011")
        elif how == "edges":  # at the parent's chunk edges: first keys gone, keys between
            edges = parent_edges(parent)
            for first, _ in edges[1::7]:
                ds.delete(first)
            gaps = [(last, nxt) for (_, last), (nxt, _) in zip(edges[3::5], edges[4::5])]
            put = {}
            while gaps and len(put) < 200_000:
                k = hash_name(rng)
                for lo, hi in gaps:
                    if lo < k < hi:
                        put[k] = value(rng)
                        gaps.remove((lo, hi))
                        break
                if len(put) >= 15:
                    break
            ds.put_many(sorted(put), [put[k] for k in sorted(put)])


@pytest.fixture
def env(cli_env, tmp_path) -> dict[str, str]:
    spill = tmp_path / "tmp"
    spill.mkdir()
    return dict(cli_env, TMPDIR=str(spill), DSBACKUP_PRESTART="0", DSBACKUP_GOLDEN_CLOCK="1",
                PYTHONPATH=os.pathsep.join([str(GOLDEN_CLOCK), cli_env["PYTHONPATH"]]))


def backup(env, uri: str, out: Path, parent: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", "backup", uri, str(out),
                           "--parent", str(parent), *OPTS, *extra],
                          env=env, capture_output=True, text=True, timeout=300)


def spills(env) -> list[str]:
    return [n for n in os.listdir(env["TMPDIR"]) if n.startswith(SPILL_PREFIX)]


def contents(uri: str) -> dict[bytes, bytes]:
    with open_datastore(uri, readonly=True) as ds:
        return {k: v for ks, vs in ds.scan_batches() for k, v in zip(ks, vs)}


@pytest.fixture
def copy(tmp_path, template):
    shutil.copytree(template / "src", tmp_path / "src", symlinks=True)
    shutil.copy2(template / "p.tar.gz", tmp_path / "p.tar.gz")
    return tmp_path / "src", tmp_path / "p.tar.gz"


@pytest.mark.parametrize("how", ["unchanged", "grown", "shrunk", "not-a-hash", "edges"])
def test_byte_identical_to_the_in_memory_listing_and_exact(env, copy, tmp_path, how):
    root, parent = copy
    change(root, parent, how)
    want = tmp_path / "mem.tar.gz"
    r = backup(env, f"flatfs:{root}?max_names={BIG}", want, parent)
    assert r.returncode == 0, r.stderr
    for n in SMALL:
        out = tmp_path / f"b{n}.tar.gz"
        r = backup(env, f"flatfs:{root}?max_names={n}", out, parent)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == want.read_bytes(), n
        assert spills(env) == []
    with ArchiveReader(want) as a:
        referenced = a.summary["referenced_chunks"]
        assert referenced > 0 and (referenced == a.summary["chunks"]) == (how == "unchanged")
    dst = tmp_path / "dst"
    BackupManager().restore_backup(tmp_path / f"b{SMALL[-1]}.tar.gz", f"flatfs:{dst}")
    assert contents(f"flatfs:{dst}") == contents(f"flatfs:{root}")


def test_foreign_files_fail_or_are_counted_over_the_spilled_listing(env, copy, tmp_path):
    root, parent = copy
    shard = next(p for p in root.iterdir() if p.is_dir())
    (shard / "stray.tmp").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    out = tmp_path / "a.tar.gz"
    r = backup(env, f"flatfs:{root}?max_names=40", out, parent)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "2 files do not belong" in r.stderr
    assert not out.exists() and spills(env) == []
    want = tmp_path / "mem.tar.gz"
    mem = backup(env, f"flatfs:{root}?max_names={BIG}", want, parent, "--skip-foreign",
                 "--json")
    assert mem.returncode == 1, mem.stderr
    r = backup(env, f"flatfs:{root}?max_names=40", out, parent, "--skip-foreign", "--json")
    assert r.returncode == 1, r.stderr
    assert out.read_bytes() == want.read_bytes()
    assert r.stdout.replace(str(out), "A") == mem.stdout.replace(str(want), "A")
    assert json.loads(r.stdout)["backup"]["statistics"]["foreign_files"] == 2
    assert spills(env) == []


def test_a_symbolic_link_under_a_hash_name_is_read_not_trusted(env, copy, tmp_path):
    root, parent = copy
    with ArchiveReader(parent) as r:
        key = r.index.entry(5).first_key
    name = key[1:].decode()
    path = root / name[-3:-1] / f"{name}.data"
    target = tmp_path / "elsewhere"
    target.write_bytes(b"through the link")
    path.unlink()
    path.symlink_to(target)
    want = tmp_path / "mem.tar.gz"
    assert backup(env, f"flatfs:{root}?max_names={BIG}", want, parent).returncode == 0
    out = tmp_path / "b.tar.gz"
    assert backup(env, f"flatfs:{root}?max_names=6", out, parent).returncode == 0
    assert out.read_bytes() == want.read_bytes()
    dst = tmp_path / "dst"
    BackupManager().restore_backup(out, f"flatfs:{dst}")
    assert contents(f"flatfs:{dst}")[key] == b"through the link"


def test_no_trust_content_keys_over_max_names(env, copy, tmp_path):
    root, parent = copy
    change(root, parent, "grown")
    want, out = tmp_path / "mem.tar.gz", tmp_path / "b.tar.gz"
    assert backup(env, f"flatfs:{root}?max_names={BIG}", want, parent,
                  "--no-trust-content-keys").returncode == 0
    r = backup(env, f"flatfs:{root}?max_names=40", out, parent, "--no-trust-content-keys")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == want.read_bytes()
    assert spills(env) == []


def test_the_bucket_path_is_taken_and_holds_few_names(copy, monkeypatch):
    """Over max_names the listing is not held whole: the buckets and the window stay near
    max_names (a bucket, and a parent chunk's keys kept from the one before)."""
    root, parent = copy
    peaks: list[int] = []
    extend = Window.extend

    def watched(self, keep):
        got = extend(self, keep)
        peaks.append(len(self.keys))
        return got

    monkeypatch.setattr(Window, "extend", watched)
    made: list[FlatfsIncremental] = []
    init = FlatfsIncremental.__init__

    def kept(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(FlatfsIncremental, "__init__", kept)
    BackupManager(BackupConfig(**CFG)).create_backup(
        f"flatfs:{root}?max_names=40", root.parent / "x.tar.gz", parent=parent)
    [inc] = made
    assert inc.buckets is not None and inc.buckets.peak_names <= 40
    assert max(peaks) <= 40 + 40  # a bucket and what is kept of the one before
    assert inc.buckets._dir is None  # closed: the spill directory is gone


def test_catalog_archives_over_max_names(env, copy, tmp_path):
    """With --include-metadata: a parent without a key catalog can be referenced by nothing
    (every key read), one with a catalog as usual; the same archives as in memory."""
    root, parent = copy
    change(root, parent, "grown")
    for p in (parent, tmp_path / "pc.tar.gz"):
        if p != parent:
            r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"flatfs:{root}",
                                str(p), *OPTS, "--include-metadata"], env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            change(root, parent, "shrunk")
        want, out = tmp_path / f"mem-{p.name}", tmp_path / f"b-{p.name}"
        assert backup(env, f"flatfs:{root}?max_names={BIG}", want, p,
                      "--include-metadata").returncode == 0
        r = backup(env, f"flatfs:{root}?max_names=6", out, p, "--include-metadata")
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == want.read_bytes(), p.name
        with ArchiveReader(out) as a:
            refs = a.summary["referenced_chunks"]
        assert (refs == 0) == (p == parent)


def test_a_paged_parent_is_walked_a_page_at_a_time(env, copy, tmp_path):
    """A parent with a paged index (pages of 256 chunks): clean runs across page edges, the
    same archive as in memory."""
    root, _ = copy
    paged = dict(env, DSBACKUP_TEST_PAGE_ENTRIES="256")
    parent = tmp_path / "paged.tar.gz"
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"flatfs:{root}",
                        str(parent), *OPTS, "--paged-index", "always"], env=paged,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with ArchiveReader(parent) as a:
        assert a.index.paged and len(a.index) > 2 * 256
    change(root, parent, "edges")
    want, out = tmp_path / "mem.tar.gz", tmp_path / "b.tar.gz"
    assert backup(paged, f"flatfs:{root}?max_names={BIG}", want, parent).returncode == 0
    r = backup(paged, f"flatfs:{root}?max_names=6", out, parent)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == want.read_bytes()
    with ArchiveReader(out) as a:
        assert a.index.paged and a.summary["referenced_chunks"] > 256
