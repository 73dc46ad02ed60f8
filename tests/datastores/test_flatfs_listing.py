"""ShardLister (flatfs_listing.py): a store over ``max_names`` names is listed once (its shard
directories read in one pass), through bucket files that are removed however the listing
ends, in the same order as the in-memory listing, with at most ``max_names`` names held."""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.errors import Cancelled, DatastoreError
from tests.support.flatfs_files import ALPHABET, random_names, write_store

BIG = 50_000  # with max_names 5,000: ten windows' worth, as 1 M names would be 10 M


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigflat") / "blocks"
    names = random_names(BIG, seed=21)
    write_store(root, names)
    return root, [("/" + n).encode() for n in names]


def _keys(ds: FlatfsDatastore, start: bytes = b"", end: bytes | None = None) -> list[bytes]:
    return [k for ks in ds.scan_keys(start, end, max_records=50_000) for k in ks]


@pytest.mark.slow
def test_a_store_over_max_names_is_listed_once_in_the_in_memory_order(big_store, tmp_path):
    root, want = big_store
    whole = FlatfsDatastore(root, readonly=True)  # 1,000,000: all in memory
    assert _keys(whole) == want
    assert whole.listing_passes == 1 and whole._lister.spills == 0
    spill = tmp_path / "spill"
    spill.mkdir()
    ds = FlatfsDatastore(root, readonly=True, max_names=5_000, spill_dir=str(spill))
    assert _keys(ds) == want
    lister = ds._lister
    assert lister.passes == 1  # every shard directory read once (10 windows before)
    assert lister.spills == 1
    assert 2_500 <= lister.peak_names <= 5_000
    assert os.listdir(spill) == []
    lo, hi = want[12_345], want[40_000]
    assert _keys(ds, lo, hi) == want[12_345:40_000]
    assert lister.passes == 2 and lister.peak_names <= 5_000
    assert os.listdir(spill) == []
    # the values are read in that order too (the central scan's path)
    got = [k for ks, _ in ds.scan_batches(want[-3000], None, max_records=999) for k in ks]
    assert got == want[-3000:]


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    root = tmp_path_factory.mktemp("skewed") / "b"
    return root, _skewed(root)


def _skewed(root) -> list[bytes]:
    """The first shard directories listed hold only names starting with Z, the others only
    names starting with A: split keys sampled from the first directories put every A name
    in the first bucket."""
    rnd = random.Random(4)
    shards = sorted(a + b for a in ALPHABET for b in ALPHABET)

    def name(first: str, shard: str) -> str:
        return first + "".join(rnd.choices(ALPHABET, k=26)) + shard + rnd.choice(ALPHABET)

    z = {name("Z", rnd.choice(shards[:10])) for _ in range(1000)}
    a = {name("A", rnd.choice(shards[10:])) for _ in range(5000)}
    write_store(root, sorted(z | a))
    return sorted(("/" + n).encode() for n in z | a)


def test_skewed_names_are_cut_again_and_stay_within_the_bound(skewed, tmp_path):
    root, want = skewed
    spill = tmp_path / "spill"
    spill.mkdir()
    ds = FlatfsDatastore(root, readonly=True, max_names=300, spill_dir=str(spill))
    assert _keys(ds) == want
    assert ds._lister.recuts > 0  # a bucket over the bound was cut from its file
    assert ds._lister.peak_names <= 300
    assert ds._lister.passes == 1
    assert os.listdir(spill) == []
    ds.max_names = 7  # every bucket cut again, several times
    ds._lister.peak_names = 0
    assert _keys(ds) == want and ds._lister.peak_names <= 7


def test_spill_files_are_removed_when_the_reader_stops_or_is_interrupted(skewed, tmp_path):
    root, want = skewed
    spill = tmp_path / "spill"
    spill.mkdir()
    ds = FlatfsDatastore(root, readonly=True, max_names=500, spill_dir=str(spill))
    for exc in (RuntimeError("consumer failed"), KeyboardInterrupt()):
        it = ds.scan_keys(max_records=100)
        assert next(it) == want[:100]
        [d] = os.listdir(spill)
        assert d.startswith(f".dsbackup-spill-{os.getpid()}-")
        with pytest.raises(type(exc)):
            try:
                next(it)
                raise exc
            finally:
                it.close()
        assert os.listdir(spill) == []
    gen = ds.scan_batches()
    next(gen)
    del gen  # dropped unfinished: closed by the garbage collector
    assert os.listdir(spill) == []


def test_a_full_spill_disk_is_a_datastore_error_and_leaves_nothing(skewed, tmp_path):
    root, want = skewed
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        ds = FlatfsDatastore(root, readonly=True, max_names=100, spill_dir=str(tiny))
        (tiny / "filler").write_bytes(b"\0" * (1000 << 10))
        with pytest.raises(DatastoreError, match="cannot write the spill file of a flatfs "
                                                 "listing: No space left on device"):
            _keys(ds)
        (tiny / "filler").unlink()
        assert os.listdir(tiny) == []
        assert _keys(ds) == want  # with room again it works
        assert os.listdir(tiny) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_a_spill_root_that_cannot_hold_a_directory_is_a_datastore_error(skewed, tmp_path):
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    ds = FlatfsDatastore(skewed[0], readonly=True, max_names=100, spill_dir=str(not_dir))
    with pytest.raises(DatastoreError, match="cannot make the spill directory"):
        _keys(ds)


def test_the_store_is_not_written(skewed, tmp_path):
    root = skewed[0]

    def tree():
        return sorted((p, f, os.lstat(os.path.join(p, f)).st_mtime_ns)
                      for p, ds, fs in os.walk(root) for f in [*fs, *ds, "."])

    before = tree()
    ds = FlatfsDatastore(root, readonly=True, max_names=100, spill_dir=str(tmp_path))
    _keys(ds)
    assert tree() == before


def test_a_listing_stops_between_directories_when_asked(skewed, tmp_path):
    root, want = skewed
    spill = tmp_path / "spill"
    spill.mkdir()
    ds = FlatfsDatastore(root, readonly=True, max_names=300, spill_dir=str(spill))
    asked = []

    def stop_after_100() -> bool:
        asked.append(1)
        return len(asked) > 100  # well into the spilling part (after ~10 directories)

    ds.set_listing_stop(stop_after_100)
    with pytest.raises(Cancelled, match="flatfs listing stopped"):
        _keys(ds)
    assert len(asked) == 101
    assert os.listdir(spill) == []
    ds.set_listing_stop(None)
    assert _keys(ds) == want


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1.5", "99999999999999999999999"])
def test_max_names_below_1_or_not_an_integer_is_refused_at_open(tmp_path, bad):
    """max_names=0 made every bucket "over max_names" and a 1-name bucket was cut again
    forever (a scan spinning at 100% CPU); -1 an OverflowError traceback from the native
    scan, and so was a number past the scan's size_t (2^64 and over). All are a one-line error
    at open, naming the parameter."""
    import sys

    from dsbackup.datastores import open_datastore

    with FlatfsDatastore(tmp_path / "s", shard="next-to-last/2", sync=False) as ds:
        ds.put_many([b"/AB%03d" % i for i in range(20)], [b"x"] * 20)
    code = ("import sys\nfrom dsbackup.datastores import open_datastore\n"
            "ds = open_datastore(sys.argv[1], readonly=True)\n"
            "print(sum(len(b) for b in ds.scan_batches()))\n")
    r = subprocess.run([sys.executable, "-c", code, f"flatfs:{tmp_path / 's'}?max_names={bad}"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode != 0 and "max_names" in r.stderr, r.stdout + r.stderr
    with pytest.raises(DatastoreError, match="max_names"):
        open_datastore(f"flatfs:{tmp_path / 's'}?max_names={bad}", readonly=True)
    ds = FlatfsDatastore(tmp_path / "s", readonly=True)
    with pytest.raises(DatastoreError, match="max_names"):
        ds.max_names = 0
    with pytest.raises(DatastoreError, match="max_names"):
        ds.max_names = 2**64
    assert ds.max_names > 0
    ds.close()
