"""`ls` of an archive in S3 made with --include-metadata downloads its catalogs, not its chunks
(a real moto server behind the tests' fault proxy, the CLI in a subprocess): the bytes and
GETs asked for are counted at the proxy, the output is the local archive's, faults in the
middle are retried, and a range the object no longer has is exit 3."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys

import lmdb
import pytest
from s3server import SECRET_KEY, FaultProxy, Rule

from dsbackup import ArchiveReader, prefix_bounds
from dsbackup.storage import s3 as s3mod

PREFIXES = ("/a", "/b", "/c")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """~12 MB of incompressible 8 KiB values under three prefixes."""
    path = tmp_path_factory.mktemp("ls") / "src"
    rng = random.Random(5)
    env = lmdb.open(str(path), map_size=1 << 30, subdir=True)
    with env.begin(write=True) as txn:
        for p in PREFIXES:
            for i in range(500):
                txn.put(f"{p}/{i:05d}".encode(), rng.randbytes(8192))
    env.close()
    return path


def _archive(s3, store, tmp_path, name: str, *extra: str):
    """The store backed up to a local file, and the file put in the bucket (a backup with a
    paged index to S3 fails its quick check: the index pages are not among the members the
    upload keeps): (local path, its catalogs' bytes)."""
    local = tmp_path / name
    r = cli(s3.env, "backup", f"lmdb:{store}", str(local), "--level", "0", "--chunk-size", "64",
            *extra)
    assert r.returncode == 0, r.stderr
    s3.client.put_object(Bucket=s3.bucket, Key=name, Body=local.read_bytes())
    with ArchiveReader(str(local)) as rd:
        assert rd.index.chunk_count > 20
        assert rd.index.catalog_count == (rd.index.chunk_count if "--include-metadata" in extra else 0)
        catalogs = sum(rd.index.catalog(i).length for i in range(rd.index.catalog_count))
    return local, catalogs


def _fetched(proxy: FaultProxy, key: str) -> tuple[int, int]:
    """(GETs of the object, bytes their Range headers asked for)."""
    gets = n = 0
    for line, h in zip(proxy.seen, proxy.headers):
        if not line.startswith("GET /") or key not in line:
            continue
        gets += 1
        rng = h.get("range", "")
        assert rng.startswith("bytes="), (line, rng)
        lo, _, hi = rng[6:].partition("-")
        n += int(hi) - int(lo) + 1 if lo else int(hi)
    return gets, n


@pytest.fixture
def proxy(s3):
    p = FaultProxy(("127.0.0.1", s3.server.port)).start()
    yield p
    p.stop()


@pytest.mark.parametrize("paged", ["never", "always"])
def test_ls_downloads_the_catalogs_not_the_chunks(s3, store, tmp_path, proxy, paged):
    local, catalogs = _archive(s3, store, tmp_path, "m.dsb", "--include-metadata",
                               "--paged-index", paged)
    with ArchiveReader(str(local)) as rd:
        chunks = rd.index.chunk_count
        in_b = len(rd.index.chunks_overlapping(*prefix_bounds("/b")))
    size = local.stat().st_size
    for gap in ("0", None):  # each catalog its own GET; the default (chunks under 64 KiB too)
        env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)
        if gap is not None:
            env["DSBACKUP_S3_GAP_KB"] = gap
        for args in ((), ("-l",), ("--prefix", "/b")):
            proxy.seen.clear()
            proxy.headers.clear()
            r = cli(env, "ls", s3.url("m.dsb"), *args)
            want = cli(s3.env, "ls", str(local), *args)
            assert r.returncode == want.returncode == 0, r.stderr
            assert r.stdout == want.stdout
            assert r.stdout.count("\n") == (500 if "--prefix" in args else 1500)
            gets, got = _fetched(proxy, "/m.dsb")
            assert got < size / 10, (got, size)  # never the chunks
            if gap == "0":  # the open's 256 KiB tail (trailer, index), then the catalogs
                assert got <= catalogs + s3mod.TAIL_BYTES + (16 << 10), (got, catalogs)
                # the open, the manifest, index pages, a GET per catalog (a third: one prefix)
                most = in_b if "--prefix" in args else chunks
                assert gets <= 3 + most + (8 if paged == "always" else 0), (gets, chunks)


def test_ls_of_an_archive_without_catalogs_with_prefix_reads_its_chunks_only(
        s3, store, tmp_path, proxy):
    local, _ = _archive(s3, store, tmp_path, "plain.dsb", "--paged-index", "never")
    size = local.stat().st_size
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint)
    r = cli(env, "ls", s3.url("plain.dsb"), "--prefix", "/c")
    assert r.returncode == 0 and r.stdout == cli(s3.env, "ls", str(local), "--prefix",
                                                 "/c").stdout
    _, got = _fetched(proxy, "/plain.dsb")
    # the third of the chunks under /c and the open, not the blocks read ahead past them
    assert got <= size / 3 + s3mod.TAIL_BYTES + (1 << 20), (got, size)


def test_ls_faults_in_the_middle_are_retried_and_a_shrunk_object_is_exit_3(
        s3, store, tmp_path, proxy):
    local, _ = _archive(s3, store, tmp_path, "f.dsb", "--include-metadata")
    with ArchiveReader(str(local)) as rd:
        c5, c9, c13 = (rd.index.catalog(i).offset for i in (5, 9, 13))
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_RETRIES="3",
               DSBACKUP_S3_GAP_KB="0")  # a GET per catalog: the rules meet the ones chosen
    proxy.rules = [Rule("GET", "/f.dsb", times=1, status=None, cut=True, range=f"bytes={c5}-"),
                   Rule("GET", "/f.dsb", times=1, status=503, range=f"bytes={c9}-")]
    r = cli(env, "ls", s3.url("f.dsb"), "-l")
    assert r.returncode == 0, r.stderr
    assert r.stdout == cli(s3.env, "ls", str(local), "-l").stdout
    assert [rule.hits for rule in proxy.rules] == [1, 1]
    # the object ends before a catalog's range (it changed after the open): exit 3, one line
    # (a failed GET is not kept: the read fetches again, through the block: 416 there too)
    block = s3mod.BLOCK * (c13 // s3mod.BLOCK)
    proxy.rules = [Rule("GET", "/f.dsb", times=1, status=416, range=f"bytes={c13}-"),
                   Rule("GET", "/f.dsb", times=1, status=416,
                        range=f"bytes={block}-{block + s3mod.BLOCK - 1}")]
    r = cli(env, "ls", s3.url("f.dsb"))
    assert r.returncode == 3, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: ")]
    assert len(lines) == 1 and "short read at offset " in lines[0], r.stderr
    assert SECRET_KEY not in r.stderr and "Traceback" not in r.stderr
    # a truncated object: exit 3 as ever
    data = s3.get("f.dsb")
    s3.client.put_object(Bucket=s3.bucket, Key="t.dsb", Body=data[:len(data) // 2])
    r = cli(env, "ls", s3.url("t.dsb"))
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr


def test_ls_of_an_incremental_reads_its_parents_catalogs_not_their_chunks(
        s3, store, tmp_path, proxy):
    src = shutil.copytree(store, tmp_path / "src")
    full, _ = _archive(s3, src, tmp_path, "full.dsb", "--include-metadata")
    env = lmdb.open(str(src), map_size=1 << 30, subdir=True)
    with env.begin(write=True) as txn:  # after every key: the parent's chunks are referenced
        for i in range(200):
            txn.put(f"/d/{i:05d}".encode(), random.Random(i).randbytes(8192))
    env.close()
    inc, _ = _archive(s3, src, tmp_path, "inc.dsb", "--include-metadata", "--parent",
                      str(full))
    sizes = {}
    with ArchiveReader(str(inc)) as rd:
        assert 0 < sum(rd.entry(i).in_parent for i in range(rd.index.chunk_count)) \
            < rd.index.chunk_count
        for r in (rd, *rd.open_parents().levels):
            sizes[r.path.name] = sum(r.index.catalog(i).length
                                     for i in range(r.index.catalog_count))
    r = cli(dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, DSBACKUP_S3_GAP_KB="0"), "ls", "-l",
            s3.url("inc.dsb"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == cli(s3.env, "ls", "-l", str(inc)).stdout and r.stdout.count("\n") == 1700
    for name in ("full.dsb", "inc.dsb"):
        _, got = _fetched(proxy, f"/{name}")
        assert got <= sizes[name] + s3mod.TAIL_BYTES + (16 << 10), (name, got, sizes)
