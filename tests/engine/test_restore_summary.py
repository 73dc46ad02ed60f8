"""A chunk rewritten *consistently* (its payload, its member's checksums, its index entry's
payload XXH3, the trailer: tests/support/rewritten.py) passes every per-chunk check; only the
summary's fingerprint (docs/FORMAT.md §7) tells. restore checks the summary against the index
before it writes anything (exit 3, one line, no target made, no journal), for full,
incremental (its own chunk, or a parent's it refers to), encrypted and paged archives and from
S3; and after a whole restore it compares what it wrote with the summary's totals. On the code
before this check every restore below said OK with exit 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rewritten import rewrite_chunk, rewrite_summary
from storerecords import store_records

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
RAW_KEY = b"\x5a" * 32  # tests/support/golden.py


def _one_error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def _golden(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / "archives"
    d.mkdir(exist_ok=True)
    for n in names:
        shutil.copy(GOLDEN / n, d / n)
    return d


def _key_file(tmp_path: Path) -> Path:
    k = tmp_path / "key"
    k.write_bytes(RAW_KEY)
    k.chmod(0o600)
    return k


# name of the archive restored, the archive whose chunk is rewritten, encrypted
CASES = {
    "full": ("full.tar.gz", "full.tar.gz", False),
    "incremental-own-chunk": ("incr.tar.gz", "incr.tar.gz", False),
    "incremental-parent-chunk": ("incr.tar.gz", "full.tar.gz", False),
    "encrypted": ("enc-full.tar.gz", "enc-full.tar.gz", True),
    "encrypted-incremental": ("enc-incr.tar.gz", "enc-incr.tar.gz", True),
}


@pytest.mark.parametrize("scheme", ["lmdb", "sqlite"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_refuses_a_consistently_rewritten_chunk(tmp_path, run_cli, case, scheme):
    top, altered, encrypted = CASES[case]
    d = _golden(tmp_path, "full.tar.gz", "incr.tar.gz", "enc-full.tar.gz", "enc-incr.tar.gz")
    rewrite_chunk(d / altered, raw_key=RAW_KEY if encrypted else None)
    key = ["--key-file", _key_file(tmp_path)] if encrypted else []
    target = tmp_path / "t"
    uri = f"lmdb:{target}" if scheme == "lmdb" else f"sqlite:{target}"
    r = run_cli("restore", d / top, uri, *key)
    assert r.returncode == 3, r.stderr
    line = _one_error(r)
    assert "summary says" in line and "fingerprint" in line and altered in line
    assert "nothing was restored" in line
    assert not target.exists()  # refused before the target was made
    assert not list(tmp_path.glob("t.dsbackup*"))  # no journal, no lock left
    assert run_cli("verify", d / altered, *key).returncode == 3  # verify agrees


def test_the_same_archive_unaltered_restores(tmp_path, run_cli):
    """The rewrite helper changes what it says and nothing else: an untouched copy restores."""
    d = _golden(tmp_path, "full.tar.gz", "incr.tar.gz")
    r = run_cli("restore", d / "incr.tar.gz", f"lmdb:{tmp_path / 't'}")
    assert r.returncode == 0, r.stderr


@pytest.fixture
def paged(tmp_path, make_archive):
    recs = [(b"/%s/%05d" % (ns, i), b"value %d" % i * 3) for ns in (b"a", b"b")
            for i in range(600)]
    path = tmp_path / "paged.tar.gz"
    make_archive(path, recs, chunk_size=1, page_entries=256)  # 1,200 chunks, 5 pages
    return path


def test_paged_archive_refused_whole_or_by_a_prefix_spanning_it(paged, tmp_path, run_cli):
    assert rewrite_chunk(paged, 900) == 900  # a /b chunk, in page 3
    for n, extra in enumerate(([], ["--prefix", "/"], ["--pattern", "/a/**"])):
        target = tmp_path / f"t{n}"
        r = run_cli("restore", paged, f"lmdb:{target}", *extra)
        assert r.returncode == 3 and "summary says" in _one_error(r), extra
        assert not target.exists()
    # a prefix restore of a paged index reads only the pages of its range, so it cannot check
    # the summary (docs/CLI.md restore): a range without the rewritten chunk restores
    r = run_cli("restore", paged, f"lmdb:{tmp_path / 'a'}", "--prefix", "/a")
    assert r.returncode == 0, r.stderr
    assert len(store_records(f"lmdb:{tmp_path / 'a'}")) == 600


def test_a_prefix_restore_of_a_single_index_checks_the_summary(tmp_path, run_cli):
    d = _golden(tmp_path, "full.tar.gz")
    rewrite_chunk(d / "full.tar.gz")
    r = run_cli("restore", d / "full.tar.gz", f"lmdb:{tmp_path / 't'}", "--prefix", "/pins")
    assert r.returncode == 3 and "summary says" in _one_error(r)


def test_restore_from_s3_refuses_too(s3, tmp_path, run_cli):
    d = _golden(tmp_path, "full.tar.gz")
    rewrite_chunk(d / "full.tar.gz")
    s3.client.put_object(Bucket=s3.bucket, Key="a/full.tar.gz",
                         Body=(d / "full.tar.gz").read_bytes())
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dsbackup", "restore", s3.url("a/full.tar.gz"),
                        f"lmdb:{tmp_path / 't'}"], env=s3.env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 3, r.stderr
    assert "summary says" in _one_error(r)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("uri", ["lmdb", "lmdb-overwrite", "sqlite", "flatfs", "flatfs-skip"])
def test_a_restore_whose_totals_disagree_with_the_summary_is_not_ok(tmp_path, run_cli, uri):
    """raw_bytes is in no index field: a summary lying about it passes the checks made before
    writing. The whole restore then finds its key and value bytes differ: exit 3, and the
    journal is kept, set back to chunk 0, so the target is not backed up as whole and a rerun
    restores (and counts) everything again."""
    scheme, _, how = uri.partition("-")
    name = "flatfs-full.tar.gz" if scheme == "flatfs" else "full.tar.gz"
    archive = _golden(tmp_path, name) / name
    rewrite_summary(archive, {"raw_bytes": _summary(archive)["raw_bytes"] - 1})
    spec = f"{scheme}:{tmp_path / 't'}"
    extra = {"": [], "overwrite": ["--overwrite"], "skip": ["--skip-existing"]}[how]
    if how == "overwrite":
        assert run_cli("restore", GOLDEN / "exclude.tar.gz", spec).returncode == 0
    r = run_cli("restore", archive, spec, *extra)
    assert r.returncode == 3, r.stderr
    line = _one_error(r)
    assert "key and value bytes where its summary says" in line
    journal = tmp_path / "t.dsbackup-restore.json"
    assert str(journal) in line
    assert json.loads(journal.read_text())["next_chunk"] == 0
    assert len(store_records(spec)) == _summary(archive)["records"]  # what was written stays
    r = run_cli("backup", spec, tmp_path / "b.tar.gz")  # not backed up as a whole store
    assert r.returncode == 2 and "did not finish" in _one_error(r)
    r = run_cli("restore", archive, spec, *extra)  # a rerun starts over, and says so again
    assert r.returncode == 3 and "key and value bytes" in _one_error(r)
    assert json.loads(journal.read_text())["next_chunk"] == 0
    assert run_cli("verify", archive).returncode == 3  # deep verify counts them too


def test_totals_disagreeing_after_a_restore_that_wrote_nothing(tmp_path, run_cli):
    """--skip-existing into a target holding every key: nothing written, still not OK, and
    no journal (the target is as it was)."""
    archive = _golden(tmp_path, "full.tar.gz") / "full.tar.gz"
    spec = f"lmdb:{tmp_path / 't'}"
    assert run_cli("restore", GOLDEN / "full.tar.gz", spec).returncode == 0
    rewrite_summary(archive, {"raw_bytes": _summary(archive)["raw_bytes"] + 1})
    r = run_cli("restore", archive, spec, "--skip-existing")
    assert r.returncode == 3 and "nothing was written into it" in _one_error(r)
    assert not (tmp_path / "t.dsbackup-restore.json").exists()


def _summary(path: Path) -> dict:
    from dsbackup.archive.reader import ArchiveReader

    with ArchiveReader(path) as r:
        return dict(r.summary)
