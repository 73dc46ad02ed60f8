"""``-``: backup to standard output, restore/verify/inspect/ls from standard input (spooled to an
unnamed temp file); refused where an archive must be opened by name (docs/STORAGE.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lmdb_files import read_all

from dsbackup import datasets


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "src"
    datasets.write_lmdb(str(p), list(datasets.iter_blocks(20)) + list(datasets.iter_small(2000)))
    return p


def run(cli_env, *args, stdin=None, stdout=None, text=True):
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=cli_env,
                          stdin=stdin, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=240, text=text)


def test_backup_to_stdout_then_verify_restore_inspect_ls_from_stdin(cli_env, src, tmp_path):
    out = tmp_path / "piped.dsb"
    with open(out, "wb") as f:
        r = run(cli_env, "backup", f"lmdb:{src}", "-", "--include-metadata", stdout=f)
    assert r.returncode == 0, r.stderr
    local = tmp_path / "local.dsb"
    assert run(cli_env, "backup", f"lmdb:{src}", local).returncode == 0
    assert out.stat().st_size > 0
    with open(out, "rb") as f:
        r = run(cli_env, "verify", "-", "--json", stdin=f)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "-"
    with open(out, "rb") as f:
        r = run(cli_env, "restore", "-", f"lmdb:{tmp_path / 'dst'}", stdin=f)
    assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "dst") == read_all(src)
    for cmd in (("inspect", "-", "--json"), ("ls", "-", "--json")):
        with open(out, "rb") as f:
            r = run(cli_env, *cmd, stdin=f)
        assert r.returncode == 0, r.stderr
    # a truncated stream (a failed backup's output has no trailer): exit 3
    with open(out, "rb") as f:
        data = f.read()
    r = subprocess.run([sys.executable, "-m", "dsbackup", "verify", "-"], env=cli_env,
                       input=data[:len(data) // 2], capture_output=True, timeout=120)
    assert r.returncode == 3, r.stderr


def test_dash_is_refused_where_an_archive_is_opened_by_name(cli_env, src, tmp_path):
    local = tmp_path / "a.dsb"
    assert run(cli_env, "backup", f"lmdb:{src}", local).returncode == 0
    cases = [
        (("backup", f"lmdb:{src}", tmp_path / "b.dsb", "--parent", "-"), "--parent cannot be"),
        (("verify", local, "--parent-dir", "-"), "--parent-dir cannot be"),
        (("prune", "-", "--keep-last", "1"), "not '-'"),
        (("backup", f"lmdb:{src}", "-", "--json"), "leave out --json"),
        (("backup", f"lmdb:{src}", "-", "--format", "go"), "local files only"),
    ]
    for args, msg in cases:
        r = run(cli_env, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_an_incremental_to_stdout_that_fails_its_check_leaves_no_whole_archive(
        cli_env, src, tmp_path):
    """The check before the "rename" of a backup to `-` ran after the trailer was sent: an
    incremental referring to a damaged parent member failed, exit 3 ("this backup could not
    be restored, so it is not kept"), but its output was a whole archive, which `inspect`
    read with exit 0 (and `| aws s3 cp - ...` stored). The stream's last byte is now sent
    only once the check has passed: the failed output's trailer is cut, refused (exit 3)."""
    from dsbackup.archive.reader import ArchiveReader

    parent = tmp_path / "p.dsb"
    assert run(cli_env, "backup", f"lmdb:{src}", parent).returncode == 0
    with ArchiveReader(parent) as r:
        m = r.entry(0)
    good = parent.read_bytes()
    bad = bytearray(good)
    bad[m.offset + m.length // 2] ^= 0x55
    parent.write_bytes(bad)
    out = tmp_path / "i.dsb"
    with open(out, "wb") as f:
        r = run(cli_env, "backup", f"lmdb:{src}", "-", "--parent", parent, stdout=f)
    assert r.returncode == 3 and "which is damaged" in r.stderr, r.stderr
    assert out.stat().st_size > 1000
    r = run(cli_env, "inspect", out)
    assert r.returncode == 3 and "trailer" in r.stderr, (r.returncode, r.stderr)
    parent.write_bytes(good)  # the same backup, the parent whole: complete, and it verifies
    with open(out, "wb") as f:
        r = run(cli_env, "backup", f"lmdb:{src}", "-", "--parent", parent, stdout=f)
    assert r.returncode == 0, r.stderr
    r = run(cli_env, "verify", out)
    assert r.returncode == 0, r.stderr


def test_a_stream_cut_by_timeout_says_so_not_that_nothing_was_written(cli_env, tmp_path):
    """`backup --timeout S SRC -`: the reader already had part of the archive, yet the error
    said "nothing was written at the archive path"."""
    import os

    datasets.write_lmdb(str(tmp_path / "big"), ((b"/k/%07d" % i, os.urandom(400))
                                                for i in range(60_000)))
    out = tmp_path / "part"
    with out.open("wb") as f:
        r = run(cli_env, "backup", f"lmdb:{tmp_path / 'big'}", "-", "--timeout", "0.05",
                "--workers", "1", stdout=f)
    assert r.returncode == 130, r.stderr
    assert ("-: backup timed out after 0.05s; the archive stream on standard output was cut: "
            "what its reader received is not a valid archive") in r.stderr, r.stderr
    assert "nothing was written" not in r.stderr
    v = run(cli_env, "verify", str(out))
    assert v.returncode in (2, 3), v.stderr  # not an archive
