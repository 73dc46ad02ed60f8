"""SIGKILL a real encrypted (and a paged) `dsbackup backup` once its temp file holds part of the
archive, then `backup --resume` with the same key options, killed again, resumed again: the
archive verifies deep with the key, restores exactly the store, and no nonce was used for two
different members in any state the file was in (docs/FORMAT.md §11.4, §11.5)."""

from __future__ import annotations

import subprocess
import sys

from dsbackup import datasets
from dsbackup.archive.crypto import KeyMaterial
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from tests.support.deadwriter import sigkill_when_temp_over, temp_paths
from tests.support.nonces import no_nonce_reuse

PASSPHRASE = b"resume me, not my nonces"


def contents(uri: str) -> list[tuple[bytes, bytes]]:
    out = []
    with open_datastore(uri, readonly=True) as ds:
        for keys, values in ds.scan_batches():
            out += list(zip(keys, values))
    return out


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *args], env=env,
                          capture_output=True, text=True)


def test_sigkill_encrypted_then_resume_twice(tmp_path, cli_env):
    env = {**cli_env, "DSBACKUP_TEST_SCRYPT_LOG2N": "14"}
    pfile = tmp_path / "pass"
    pfile.write_bytes(PASSPHRASE + b"\n")
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(150000))
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "a.tar.gz"
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(archive),
           "--workers", "1", "--level", "6", "--chunk-size", "100", "--include-metadata",
           "--encrypt", "--passphrase-file", str(pfile)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    size = archive.stat().st_size
    archive.unlink()

    first = sigkill_when_temp_over(cmd, env, out, archive.name, size // 4).read_bytes()
    [tmp] = temp_paths(out, archive.name)

    # a wrong passphrase, or no key: exit 2, the file untouched
    bad = tmp_path / "bad"
    bad.write_bytes(b"not it\n")
    r = subprocess.run([*cmd[:-1], str(bad), "--resume"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "wrong passphrase or key" in r.stderr, r.stderr
    r = subprocess.run([*cmd[:-3], "--resume"], env={**env, "DSBACKUP_PASSPHRASE": ""},
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "encrypted archive; give --encrypt" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert temp_paths(out, archive.name) == [tmp] and tmp.read_bytes() == first

    # the resume, killed too once it has written more than the first run had
    second = sigkill_when_temp_over([*cmd, "--resume"], env, out, archive.name,
                                    len(first) + size // 4).read_bytes()
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and temp_paths(out, archive.name) == []

    v = run(["verify", "--passphrase-file", str(pfile), str(archive)], env)
    assert v.returncode == 0, v.stdout + v.stderr
    key = KeyMaterial(passphrase=PASSPHRASE)
    with ArchiveReader(archive, key=key) as a:
        runs = a.summary["resumed"]
        epochs = [e.epoch for e in a.index.entries()]
    assert [e["epoch"] for e in runs] == [1, 2]
    s1, s2 = runs[0]["from_seq"], runs[1]["from_seq"]
    assert 0 < s1 < s2 < len(epochs)
    assert epochs == [0] * s1 + [1] * (s2 - s1) + [2] * (len(epochs) - s2)
    assert no_nonce_reuse([(first, 0), (second, 1), (archive.read_bytes(), 2)], key) == {0, 1, 2}

    dst = tmp_path / "dst"
    r = run(["restore", "--passphrase-file", str(pfile), str(archive), f"lmdb:{dst}"], env)
    assert r.returncode == 0, r.stderr
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{src}")


def test_sigkill_paged_then_resume(tmp_path, cli_env):
    env = {**cli_env, "DSBACKUP_TEST_PAGE_ENTRIES": "256"}
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(150000))
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "a.tar.gz"
    cmd = [sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(archive),
           "--workers", "1", "--level", "6", "--chunk-size", "50", "--paged-index", "always"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with ArchiveReader(archive) as a:
        assert a.paged and a.index.page_count >= 8
    size = archive.stat().st_size
    archive.unlink()

    sigkill_when_temp_over(cmd, env, out, archive.name, size // 2)
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    v = run(["verify", str(archive)], env)
    assert v.returncode == 0, v.stdout + v.stderr
    with ArchiveReader(archive) as a:
        [epoch] = a.summary["resumed"]
        assert a.paged and epoch["from_seq"] % 256 == 0 and epoch["from_seq"] > 0
    dst = tmp_path / "dst"
    r = run(["restore", str(archive), f"lmdb:{dst}"], env)
    assert r.returncode == 0, r.stderr
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{src}")
