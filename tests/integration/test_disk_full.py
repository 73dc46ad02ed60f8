"""A full disk is an error, never a signal or a traceback (issue 20, item 3 and "disk full").

Each test runs the real CLI against a small filesystem made for it (tmpfs, mounted as root),
filled up by a filler file: backup, restore into LMDB (when it wrote through the map this
died of SIGBUS; it now writes with pwrite, a short write there), flatfs and SQLite, and a
migration. Each must exit 2 with a one-line message
naming the filesystem, leave nothing partial at a final path, and — once the filler is
removed — a rerun of the same command must give the exact result."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from storerecords import store_records

from dsbackup.datastores import open_datastore

MiB = 1 << 20


def _can_mount() -> bool:
    return (os.geteuid() == 0 and shutil.which("mount") is not None
            and not os.environ.get("DSBACKUP_TEST_NO_MOUNT"))


class SmallFs:
    """A small filesystem at `path`: a tmpfs of `size` bytes when this runs as root with
    mount(8); else (``limited``) a plain directory where `fill(left)` makes the commands run
    under RLIMIT_FSIZE = `left` (SIGXFSZ ignored: a write past it fails with EFBIG), which
    can only limit each file, not the whole directory."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.limited = not _can_mount()
        self.limit: int | None = None
        path.mkdir()
        if not self.limited:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                            str(path)], check=True)
        self.filler = path / "filler"

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, left: int) -> None:
        if self.limited:
            self.limit = left
            return
        n = max(0, self.free() - left)
        with open(self.filler, "ab") as f:
            f.write(b"\0" * n)

    def unfill(self) -> None:
        self.limit = None
        self.filler.unlink(missing_ok=True)

    def preexec(self):
        limit = self.limit
        if limit is None:
            return None

        def apply() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return apply

    def close(self) -> None:
        if not self.limited:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    made: list[SmallFs] = []

    def make(size: int = 32 * MiB) -> SmallFs:
        fs = SmallFs(tmp_path / f"fs{len(made)}", size)
        made.append(fs)
        return fs
    yield make
    for fs in made:
        fs.close()


@pytest.fixture
def run_on(cli_env):
    """run_on(fs, *args): the CLI as a subprocess, under fs's file size limit if any."""
    import sys

    def run(fs: SmallFs, *args: object):
        return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)],
                              env=cli_env, capture_output=True, text=True, timeout=300,
                              preexec_fn=fs.preexec())
    return run


def _records(n: int = 3000, size: int = 3000, upper: bool = False) -> list[tuple[bytes, bytes]]:
    rnd = __import__("random").Random(5)
    fmt = b"/K%06d" if upper else b"/k/%06d"
    return [(fmt % i, rnd.randbytes(size)) for i in range(n)]


def _assert_clean_failure(r, fs: SmallFs) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    if not fs.limited:  # (a file size limit shows as EFBIG, or EIO in LMDB and SQLite)
        assert "no space left" in lines[0].lower() and str(fs.path) in lines[0], lines[0]


@pytest.mark.parametrize("scheme,mode", [("lmdb", None), ("lmdb", "--overwrite"),
                                         ("flatfs", None), ("sqlite", None)])
def test_restore_on_a_full_disk(tmp_path, small_fs, make_archive, run_on, scheme, mode):
    recs = _records(upper=scheme == "flatfs")
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, recs, chunk_size=64)
    fs = small_fs(32 * MiB)
    if fs.limited and scheme == "flatfs":
        pytest.skip("RLIMIT_FSIZE limits each file: flatfs's small files never reach it")
    uri = f"{scheme}:{fs.path / 't'}" + (".db" if scheme == "sqlite" else "")
    opts = [mode] if mode else []
    if mode:  # into an existing store (the py-lmdb path, not the native writer)
        ds = open_datastore(uri)
        ds.put_many([recs[0][0]], [b"old"])
        ds.close()
    fs.fill(4 * MiB)  # the store needs ~9 MiB
    r = run_on(fs, "restore", *opts, arch, uri)
    _assert_clean_failure(r, fs)
    fs.unfill()
    r = run_on(fs, "restore", *opts, arch, uri)
    assert r.returncode == 0, r.stderr
    assert store_records(uri) == dict(recs)
    assert not [p for p in fs.path.iterdir() if "dsbackup" in p.name]


def test_backup_on_a_full_disk(tmp_path, small_fs, run_on, run_cli):
    recs = _records()
    src = f"lmdb:{tmp_path / 'src'}"
    ds = open_datastore(src)
    ds.put_many([k for k, _ in recs], [v for _, v in recs])
    ds.close()
    fs = small_fs(32 * MiB)
    fs.fill(3 * MiB)  # the archive needs ~9 MiB (random values do not compress)
    out = fs.path / "b.tar.gz"
    r = run_on(fs, "backup", src, out)
    _assert_clean_failure(r, fs)
    assert [p.name for p in fs.path.iterdir() if p.name != "filler"] == []  # nothing partial
    fs.unfill()
    r = run_on(fs, "backup", src, out)
    assert r.returncode == 0, r.stderr
    assert run_cli("verify", out).returncode == 0
    r = run_cli("restore", out, f"lmdb:{tmp_path / 'back'}")
    assert r.returncode == 0 and store_records(f"lmdb:{tmp_path / 'back'}") == dict(recs)


def test_migrate_on_a_full_disk(tmp_path, small_fs, run_on):
    recs = _records()
    src = f"lmdb:{tmp_path / 'src'}"
    ds = open_datastore(src)
    ds.put_many([k for k, _ in recs], [v for _, v in recs])
    ds.close()
    plan = tmp_path / "plan.toml"
    plan.write_text('id = "c"\nversion = "1"\n[[steps]]\nid = "copy"\ntype = "copy"\n')
    fs = small_fs(32 * MiB)
    fs.fill(4 * MiB)
    dst = f"lmdb:{fs.path / 'dst'}"
    r = run_on(fs, "migrate", plan, src, dst)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert fs.limited or "no space left" in r.stderr.lower()
    fs.unfill()
    r = run_on(fs, "migrate", plan, src, dst, "--resume")
    if r.returncode != 0:  # a failed copy is rolled back: the run starts afresh
        r = run_on(fs, "migrate", plan, src, dst)
    assert r.returncode == 0, r.stderr
    assert store_records(dst) == dict(recs)


@pytest.mark.parametrize("scheme", ["sqlite", "lmdb", "fsds", "leveldb", "flatfs"])
def test_restore_into_a_new_store_on_a_disk_already_full(tmp_path, small_fs, make_archive,
                                                         run_on, scheme):
    """The disk is full before the store is made: one line naming the filesystem (a sqlite:
    target said 'not a dsbackup SQLite datastore: database or disk is full' and left an
    empty database file behind, an lmdb: one died of SIGBUS, and the store's lock file was
    left when its PID line could not be written), and a rerun once there is space restores everything."""
    recs = _records(n=300, upper=scheme == "flatfs")
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, recs, chunk_size=64)
    fs = small_fs(4 * MiB)
    if fs.limited:
        pytest.skip("needs a real full filesystem (root and mount)")
    uri = f"{scheme}:{fs.path / 't'}" + (".db" if scheme == "sqlite" else "")
    if scheme == "flatfs":
        uri += "?shard=/repo/flatfs/shard/v1/next-to-last/2"
    fs.fill(0)
    r = run_on(fs, "restore", arch, uri)
    _assert_clean_failure(r, fs)
    assert sorted(p.name for p in fs.path.iterdir() if p.name != "filler") in ([], ["t"])
    fs.unfill()
    r = run_on(fs, "restore", arch, uri)
    assert r.returncode == 0, r.stderr
    assert store_records(uri) == dict(recs)


def test_migrate_into_a_new_kubo_repo_on_a_full_disk(tmp_path, small_fs, run_on):
    """A copy into a new kubo: repo that fills the disk: one line naming the filesystem
    (it was '[Errno 28] No space left on device'), and once space is freed the same command
    finishes the repo. Before, NEW was left at version 11 with part of the records and every
    rerun was refused as 'an existing repo at version 11', '--resume' too (hostile review)."""
    from tests.migration.kubo_v11 import block_files, expected_files, make_v11_repo

    repo = make_v11_repo(tmp_path / "ipfs", n=300)
    plan = tmp_path / "plan.toml"
    plan.write_text('id = "c"\nversion = 12\n[kubo]\nfrom_version = 11\nto_version = 12\n'
                    '[[steps]]\nid = "copy"\ntype = "copy"\nsource = "source"\n'
                    'target = "target"\n'
                    'transform = { key_transform = "cid_to_multihash:/blocks" }\n')
    fs = small_fs(8 * MiB)
    if fs.limited:
        pytest.skip("RLIMIT_FSIZE limits each file: flatfs's small files never reach it")
    fs.fill(512 << 10)  # the blocks alone take ~1.2 MiB (one page a file)
    new = fs.path / "new"
    r = run_on(fs, "migrate", plan, f"kubo:{repo.path}", f"kubo:{new}")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    error = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert error and "no space left on" in error[0] and str(fs.path) in error[0], r.stderr
    assert (new / "version").read_text() == "11\n"
    fs.unfill()
    r = run_on(fs, "migrate", plan, f"kubo:{repo.path}", f"kubo:{new}")
    assert r.returncode == 0, r.stderr
    assert (new / "version").read_bytes() == b"12\n"
    assert block_files(new) == expected_files(repo.after)
    assert not (fs.path / "new.dsmigrate" / "c.kubo-new").exists()


def test_a_resumed_backup_on_a_full_disk_keeps_the_killed_runs_work(tmp_path, small_fs,
                                                                     run_on, run_cli):
    """`backup --resume` that fills the disk keeps the temp file it continued, for the next
    --resume: before, it removed it ('the temporary file is removed') and with it the killed
    runs' work, so the rerun started from scratch (hostile review)."""
    from dsbackup.archive.reader import ArchiveReader
    from tests.support.deadwriter import dead_writer_file, temp_paths

    recs = _records()
    src = f"lmdb:{tmp_path / 'src'}"
    ds = open_datastore(src)
    ds.put_many([k for k, _ in recs], [v for _, v in recs])
    ds.close()
    whole = tmp_path / "whole.tar.gz"
    assert run_cli("backup", src, whole).returncode == 0
    with ArchiveReader(whole) as r:
        e = r.index.entry(5)
    kept = whole.read_bytes()[:e.offset + e.length]
    fs = small_fs(32 * MiB)
    out = fs.path / "b.tar.gz"
    dead_writer_file(out, kept + b"torn")
    fs.fill(1 * MiB)  # the rest needs ~5 MiB
    r = run_on(fs, "backup", "--resume", src, out)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    [error] = [ln for ln in r.stderr.splitlines() if "error:" in ln]  # (beside 'resuming')
    assert fs.limited or "no space left" in error, error
    assert error.endswith("the temporary file is kept: free space and run backup --resume "
                          "again"), error
    [left] = temp_paths(fs.path, out.name)
    assert left.read_bytes()[:len(kept)] == kept  # the killed run's chunks are still there
    assert not out.exists()
    fs.unfill()
    r = run_on(fs, "backup", "--resume", src, out)
    assert r.returncode == 0, r.stderr
    assert "6 chunks" in r.stderr and "kept" in r.stderr, r.stderr  # continued, not redone
    assert temp_paths(fs.path, out.name) == []
    assert run_cli("verify", out).returncode == 0
    r = run_cli("restore", out, f"lmdb:{tmp_path / 'back'}")
    assert r.returncode == 0 and store_records(f"lmdb:{tmp_path / 'back'}") == dict(recs)


def test_a_full_tmpdir_is_one_line_naming_it(tmp_path, small_fs, make_archive, cli_env):
    """$TMPDIR full: `restore -` (standard input spooled there) and a backup of a LevelDB
    store on another filesystem (its snapshot copied there) said '[Errno 28] No space left on
    device: ...'; now one line naming the filesystem and TMPDIR, exit 2, nothing left in
    it (hostile review)."""
    import sys

    recs = _records(n=300)
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, recs, chunk_size=64)
    ldb = f"leveldb:{tmp_path / 'ldb'}"
    with open_datastore(ldb) as ds:
        ds.put_many([k for k, _ in recs], [v for _, v in recs])
    fs = small_fs(4 * MiB)
    if fs.limited:
        pytest.skip("needs a real full filesystem (root and mount)")
    fs.fill(64 << 10)
    env = {**cli_env, "TMPDIR": str(fs.path)}
    for args, stdin in ((["restore", "-", f"lmdb:{tmp_path / 'back'}"], arch),
                        (["backup", ldb, tmp_path / "b.tar.gz"], None)):
        with open(stdin or os.devnull, "rb") as f:
            r = subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                               stdin=f, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        [line] = r.stderr.splitlines()
        assert f"no space left on {fs.path}" in line and "TMPDIR=" in line, line
        assert sorted(p.name for p in fs.path.iterdir()) == ["filler"]
    assert not (tmp_path / "b.tar.gz").exists()
