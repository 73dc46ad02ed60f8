"""A backup with a paged index (docs/FORMAT.md §11.3) to S3 and to standard output: the quick
check before the upload completes reads the index pages from the record of what was sent
(dsbackup.storage.sent; issue #17). The real CLI, moto's server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lmdb_files import read_all

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader

PAGE = "256"  # the smallest page: a few thousand chunks span many pages
OPTS = ("--paged-index", "always", "--chunk-size", "8", "--chunk-max-bytes", "4096")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    src = tmp_path_factory.mktemp("paged") / "src"
    datasets.write_lmdb(str(src), list(datasets.iter_blocks(8)) + list(datasets.iter_small(20000)))
    return src


def cli(env, *args, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          timeout=300, **kw)


def paged_env(env: dict[str, str], tmp_path) -> dict[str, str]:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return dict(env, DSBACKUP_TEST_PAGE_ENTRIES=PAGE, TMPDIR=str(tmp))


def pages_of(path) -> int:
    with ArchiveReader(path) as r:
        assert r.paged
        return -(-r.chunk_count // r.index.page_entries)


def test_paged_backup_to_s3_checks_restores_and_deep_verifies(s3, store, tmp_path):
    env = paged_env(s3.env, tmp_path)
    url = s3.url("node/paged.dsb")
    r = cli(env, "backup", f"lmdb:{store}", url, *OPTS, "--json")
    assert r.returncode == 0, r.stderr
    assert s3.objects() == ["node/paged.dsb"] and s3.uploads() == []
    assert list((tmp_path / "tmpdir").iterdir()) == []  # the spool files are gone
    r = cli(env, "verify", url, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mode"] == "deep"
    r = cli(env, "restore", url, f"lmdb:{tmp_path / 'dst'}")
    assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "dst") == read_all(store)
    local = tmp_path / "paged.dsb"
    local.write_bytes(s3.get("node/paged.dsb"))
    assert pages_of(local) >= 5
    # an incremental on it, paged too: its pages hold references to the parent's chunks
    inc = s3.url("node/inc.dsb")
    r = cli(env, "backup", f"lmdb:{store}", inc, *OPTS, "--parent", url)
    assert r.returncode == 0, r.stderr
    r = cli(env, "restore", inc, f"lmdb:{tmp_path / 'dst2'}")
    assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "dst2") == read_all(store)
    assert s3.uploads() == [] and list((tmp_path / "tmpdir").iterdir()) == []


def test_encrypted_paged_backup_to_s3(s3, store, tmp_path):
    env = paged_env(s3.env, tmp_path)
    env["DSBACKUP_TEST_SCRYPT_LOG2N"] = "14"
    pf = tmp_path / "pass"
    pf.write_text("correct horse battery staple\n")
    url = s3.url("enc.dsb")
    r = cli(env, "backup", f"lmdb:{store}", url, *OPTS, "--encrypt", "--passphrase-file", pf)
    assert r.returncode == 0, r.stderr
    assert s3.objects() == ["enc.dsb"] and s3.uploads() == []
    r = cli(env, "verify", url, "--passphrase-file", pf)
    assert r.returncode == 0, r.stderr
    r = cli(env, "restore", url, f"lmdb:{tmp_path / 'dst'}", "--passphrase-file", pf)
    assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "dst") == read_all(store)


def test_paged_backup_to_stdout_piped_into_restore(cli_env, store, tmp_path):
    env = paged_env(cli_env, tmp_path)
    backup = subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{store}", "-",
                               *OPTS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    restore = subprocess.run([sys.executable, "-m", "dsbackup", "restore", "-",
                              f"lmdb:{tmp_path / 'dst'}"], env=env, stdin=backup.stdout,
                             capture_output=True, timeout=300)
    backup.stdout.close()
    berr = backup.stderr.read()
    assert backup.wait(timeout=300) == 0, berr
    assert restore.returncode == 0, restore.stderr
    assert read_all(tmp_path / "dst") == read_all(store)
    out = tmp_path / "piped.dsb"
    with open(out, "wb") as f:
        r = cli(env, "backup", f"lmdb:{store}", "-", *OPTS, stdout=f, stderr=subprocess.PIPE,
                capture_output=False)
    assert r.returncode == 0, r.stderr
    assert pages_of(out) >= 5
    with open(out, "rb") as f:
        r = cli(env, "verify", "-", stdin=f)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "tmpdir").iterdir()) == []


def test_no_local_temp_space_is_one_line_exit_2_and_nothing_at_the_key(s3, store, tmp_path):
    """Files the backup may write are capped (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG, as a full
    disk gives ENOSPC): the spool of what was sent cannot grow."""
    import resource
    import signal

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))

    env = paged_env(s3.env, tmp_path)
    env["DSBACKUP_TEST_SENT_IN_MEMORY"] = "4096"
    r = cli(env, "backup", f"lmdb:{store}", s3.url("full.dsb"), *OPTS, text=True,
            preexec_fn=cap)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "local temporary space" in lines[0] and "File too large" in lines[0]
    assert s3.objects() == [] and s3.uploads() == []
    assert list((tmp_path / "tmpdir").iterdir()) == []
