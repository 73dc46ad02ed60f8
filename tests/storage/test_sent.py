"""The record of what a remote sink sent (dsbackup.storage.sent): every member the quick check
reads, kept; every chunk and catalog, hashed; memory bounded whatever the archive's size."""

from __future__ import annotations

import os
import random
import tempfile
import tracemalloc

import pytest

from dsbackup import datasets
from dsbackup._ext.checksum import xxh3_64
from dsbackup.archive import format as fmt
from dsbackup.errors import IntegrityError
from dsbackup.storage import sent
from dsbackup.storage.sent import REC, SentRecord, SentSource


@pytest.fixture
def tmpdir_spool(tmp_path, monkeypatch):
    """$TMPDIR for the spool files: a directory of this test's own."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def member(mtype: int, body: bytes) -> list[bytes]:
    """A write as the archive writer makes it: a gzip head with the `DS` subfield, then data."""
    if mtype == fmt.TYPE_CHUNK:
        sub = fmt.chunk_subfield(1, 1, len(body), 0, version=2)
    else:
        sub = fmt.data_subfield(mtype, len(body), 0, version=2,
                                flags=fmt.FLAG_PAGED if mtype == fmt.TYPE_PAGE else 0)
    return [fmt.member_head(sub), body]


def spool_fds(d) -> list[str]:
    """The open files of this process under directory `d` (unnamed spool files included)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(d)):
            out.append(target)
    return out


def test_constants_agree_with_the_format():
    assert fmt.GZIP_HEAD[:3] == sent.GZIP_MAGIC and fmt.GZIP_HEAD[3] & sent.FEXTRA
    assert sent.SUBFIELD_ID == fmt.SUBFIELD_ID
    assert sent.TYPE_AT == fmt.SUBFIELD_OFFSET + 1
    assert sent.HASHED_TYPES == (fmt.TYPE_CHUNK, fmt.TYPE_CATALOG)
    head = member(fmt.TYPE_PAGE, b"x")[0]
    assert head[sent.TYPE_AT] == fmt.TYPE_PAGE
    assert fmt.parse_member_head(head + bytes(64), "t").member_type == fmt.TYPE_PAGE


def build(n: int, seed: int = 1) -> tuple[SentRecord, list[tuple[int, int, int, bytes]]]:
    """A record of `n` writes of every kind; the list of (type, offset, length, bytes)."""
    rng = random.Random(seed)
    rec = SentRecord("s3://b/a.dsb")
    writes = []
    kinds = [fmt.TYPE_CHUNK] * 6 + [fmt.TYPE_CATALOG] * 3 + [fmt.TYPE_PAGE]
    for i in range(n):
        mtype = fmt.TYPE_KEY if i == 0 else fmt.TYPE_MANIFEST if i == 1 else rng.choice(kinds)
        pieces = member(mtype, rng.randbytes(rng.randrange(0, 300)))
        data = b"".join(pieces)
        writes.append((mtype, rec.size, len(data), data))
        assert rec.add(pieces, data if i % 2 else None) == len(data)
    trailer = b"\x00" * fmt.TRAILER_SIZE  # not a gzip member of ours: kept
    writes.append((fmt.TYPE_TRAILER, rec.size, len(trailer), trailer))
    rec.add([trailer])
    return rec, writes


def test_lookups_in_and_out_of_order(tmpdir_spool, monkeypatch):
    monkeypatch.setattr(sent, "WINDOW", 64)  # many windows
    monkeypatch.setenv(sent.IN_MEMORY_ENV, "4096")  # spilled to $TMPDIR
    rec, writes = build(5000)
    src = SentSource(rec, "s3://b/a.dsb")
    assert os.listdir(tmpdir_spool) == []  # unnamed
    assert len(spool_fds(tmpdir_spool)) == 2  # records and kept bytes, spilled
    rng = random.Random(3)
    shuffled = writes[:]
    rng.shuffle(shuffled)
    for order in (writes, writes[::-1], shuffled):
        for mtype, off, n, data in order:
            assert src.xxh3(off, n) == xxh3_64(data)
            if mtype in (fmt.TYPE_CHUNK, fmt.TYPE_CATALOG):
                with pytest.raises(IntegrityError, match=f"asked for {n} bytes at {off}, which "
                                   "is not a member that was sent"):
                    src.read(off, n)
            else:
                assert src.read(off, n) == data
                assert src.read(off + 1, n - 1) == data[1:]  # part of a member
    # one read over consecutive kept writes (the index, the summary, the trailer)
    i = max(k for k in range(len(writes) - 1) if writes[k][0] not in sent.HASHED_TYPES
            and writes[k + 1][0] not in sent.HASHED_TYPES)
    assert src.read(writes[i][1], writes[i][2] + 10) == writes[i][3] + writes[i + 1][3][:10]
    chunk = next(w for w in writes if w[0] == fmt.TYPE_CHUNK)
    for off, n in ((chunk[1], chunk[2] - 1), (chunk[1] + 1, chunk[2] - 1), (rec.size, 8)):
        with pytest.raises(IntegrityError, match=f"no member of {n} bytes was sent at offset "
                           f"{off}"):
            src.xxh3(off, n)
    with pytest.raises(IntegrityError):
        src.read(rec.size - 4, 8)  # past the end
    rec.close()
    assert spool_fds(tmpdir_spool) == [] and os.listdir(tmpdir_spool) == []


def test_in_order_lookups_read_each_window_once(tmpdir_spool, monkeypatch):
    monkeypatch.setattr(sent, "WINDOW", 256)
    rec, writes = build(20000)
    src = SentSource(rec, "x")
    reads = []
    orig = rec.records
    monkeypatch.setattr(rec, "records", lambda first, count: reads.append(count)
                        or orig(first, count))
    for _, off, n, _ in writes:
        src.xxh3(off, n)
    assert len(reads) <= 2 * len(writes) // 256 + 2
    rec.close()


CHUNK_HEAD = member(fmt.TYPE_CHUNK, b"")[0]


def test_a_record_of_many_members_stays_small(tmpdir_spool):
    """Python memory (tracemalloc) of 250 000 members and the lookups over them: bounded (a
    dict of digests, as before, was ~40 MB here)."""
    body = memoryview(bytes(200))
    n = 250_000
    tracemalloc.start()
    try:
        rec = SentRecord("s3://b/a.dsb")
        for _ in range(n):
            rec.add([CHUNK_HEAD, body])
        src = SentSource(rec, "s3://b/a.dsb")
        step = len(CHUNK_HEAD) + len(body)
        digest = xxh3_64(CHUNK_HEAD + bytes(body))
        for k in range(0, n, 7):  # in order, then out of order
            assert src.xxh3(k * step, step) == digest
        for k in random.Random(1).sample(range(n), 200):
            assert src.xxh3(k * step, step) == digest
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rec.size == n * step
    assert peak < 2 << 20, peak  # records spilled: 6 MB on disk, not in memory
    rec.close()
    assert spool_fds(tmpdir_spool) == []


RSS_PROBE = """
import resource, sys
from dsbackup.storage.sent import SentRecord, SentSource
head, body = bytes.fromhex(sys.argv[1]), memoryview(bytes(200))
rec, rss = SentRecord("x"), []
for i in range(2_000_000):
    rec.add([head, body])
    if i in (199_999, 1_999_999):
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
src = SentSource(rec, "x")
step = len(head) + 200
assert all(src.xxh3(k * step, step) for k in range(0, 2_000_000, 1000))
rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(*rss)
"""


def test_two_million_members_do_not_grow_the_rss(cli_env, tmpdir_spool):
    """The peak RSS after 2 M members (and the check's lookups) is that after 200 000: the
    records are on disk (48 MB), not in memory (a dict of digests was ~250 MB)."""
    import subprocess
    import sys

    env = dict(cli_env, TMPDIR=str(tmpdir_spool))
    r = subprocess.run([sys.executable, "-c", RSS_PROBE, CHUNK_HEAD.hex()], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    at_200k, at_2m, checked = map(int, r.stdout.split())  # KiB
    assert at_2m - at_200k < 4096 and checked - at_200k < 4096, r.stdout
    assert os.listdir(tmpdir_spool) == []


def test_a_corrupted_spilled_page_fails_the_check(s3, tmp_path, tmpdir_spool, monkeypatch):
    """The index page read back from the spool is checked against the root: a flipped byte
    in it is an integrity failure, the upload is aborted and nothing is at the key."""
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    monkeypatch.setenv(sent.IN_MEMORY_ENV, "4096")
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(12000))
    seal = SentRecord.seal
    hit = []

    def seal_and_corrupt(self):
        seal(self)
        recs = self.records(0, self.count)
        for k in range(self.count):
            off, n, pos = REC.unpack_from(recs, k * REC.size)
            if n & sent.KEPT and self.kept(pos, 18)[sent.TYPE_AT] == fmt.TYPE_PAGE:
                f = self._kept
                f.seek(pos + (n & ~sent.KEPT) // 2)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0x55]))
                hit.append(off)
                return

    monkeypatch.setattr(SentRecord, "seal", seal_and_corrupt)
    cfg = BackupConfig(chunk_size=8, chunk_max_bytes=4096, workers=1, paged_index="always")
    with pytest.raises(IntegrityError, match="index page"):
        BackupManager(cfg).create_backup(f"lmdb:{src}", s3.url("bad.dsb"))
    assert hit
    assert s3.objects() == [] and s3.uploads() == []
    assert spool_fds(tmpdir_spool) == [] and os.listdir(tmpdir_spool) == []


@pytest.fixture
def paged_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    monkeypatch.setenv(sent.IN_MEMORY_ENV, "4096")
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(12000))
    return src


def paged_backup(src, url):
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    cfg = BackupConfig(chunk_size=8, chunk_max_bytes=4096, workers=1, paged_index="always")
    return BackupManager(cfg).create_backup(f"lmdb:{src}", url)


def test_the_spool_is_gone_after_success_failure_and_ctrl_c(s3, paged_store, tmpdir_spool,
                                                            monkeypatch):
    import errno

    from dsbackup.errors import ArchiveError

    seen = []
    add = SentRecord.add

    records = []

    def watching(self, pieces, joined=None):
        if not self.count:
            records.append(self)
        n = add(self, pieces, joined)
        if self.count == 1500:
            seen.append(len(spool_fds(tmpdir_spool)))
            if interrupt:
                raise KeyboardInterrupt
        return n

    monkeypatch.setattr(SentRecord, "add", watching)
    interrupt = False
    paged_backup(paged_store, s3.url("ok.dsb"))
    assert s3.objects() == ["ok.dsb"]
    size = len(s3.get("ok.dsb"))
    assert records[0].size == size and 0 < records[0]._kept_size < size // 4  # chunks: hashed
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        paged_backup(paged_store, s3.url("int.dsb"))
    assert len(seen) == 2 and min(seen) >= 1  # spilled, unnamed
    assert spool_fds(tmpdir_spool) == [] and os.listdir(tmpdir_spool) == []
    assert s3.objects() == ["ok.dsb"] and s3.uploads() == []

    # the local temporary space runs out: one clear error, nothing at the key, no spool left
    real = tempfile.TemporaryFile

    class Full:
        def __init__(self, *a, **kw):
            self.f = real(*a, **kw)
            self.n = 0

        def write(self, b):
            self.n += len(b)
            if self.n > 50_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(tempfile, "TemporaryFile", Full)
    interrupt = False
    with pytest.raises(ArchiveError) as e:
        paged_backup(paged_store, s3.url("full.dsb"))
    assert not isinstance(e.value, IntegrityError)
    assert "no space left on" in str(e.value) and "local temporary space" in str(e.value)
    assert s3.objects() == ["ok.dsb"] and s3.uploads() == []
    assert spool_fds(tmpdir_spool) == [] and os.listdir(tmpdir_spool) == []
