"""A full disk is an error, never a signal or a traceback (issue 20, item 3 and "disk full").

Each test runs the real CLI against a small filesystem made for it (tmpfs, mounted as root),
filled up by a filler file: backup, restore into LMDB (written through the map: this used to
die of SIGBUS), flatfs and SQLite, and a migration. Each must exit 2 with a one-line message
naming the filesystem, leave nothing partial at a final path, and — once the filler is
removed — a rerun of the same command must give the exact result."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dsbackup.datastores import open_datastore

MiB = 1 << 20


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


pytestmark = pytest.mark.skipif(not _can_mount(),
                                reason="needs root and mount(8) for a small tmpfs")


class SmallFs:
    """A tmpfs of `size` bytes at `path`; `fill(left)` leaves only `left` bytes free."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True)
        self.filler = path / "filler"

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, left: int) -> None:
        n = max(0, self.free() - left)
        with open(self.filler, "ab") as f:
            f.write(b"\0" * n)

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
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


def _records(n: int = 3000, size: int = 3000, upper: bool = False) -> list[tuple[bytes, bytes]]:
    rnd = __import__("random").Random(5)
    fmt = b"/K%06d" if upper else b"/k/%06d"
    return [(fmt % i, rnd.randbytes(size)) for i in range(n)]


def _content(uri: str) -> dict[bytes, bytes]:
    ds = open_datastore(uri, readonly=True)
    try:
        out: dict[bytes, bytes] = {}
        for keys, values in ds.scan_batches(b"", None, max_records=1000, max_bytes=1 << 30):
            out.update(zip(keys, values))
        return out
    finally:
        ds.close()


def _assert_clean_failure(r, fs: SmallFs) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "no space left" in lines[0].lower() and str(fs.path) in lines[0], lines[0]


@pytest.mark.parametrize("scheme,mode", [("lmdb", None), ("lmdb", "--overwrite"),
                                         ("flatfs", None), ("sqlite", None)])
def test_restore_on_a_full_disk(tmp_path, small_fs, make_archive, run_cli, scheme, mode):
    recs = _records(upper=scheme == "flatfs")
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, recs, chunk_size=64)
    fs = small_fs(32 * MiB)
    uri = f"{scheme}:{fs.path / 't'}" + (".db" if scheme == "sqlite" else "")
    opts = [mode] if mode else []
    if mode:  # into an existing store (the py-lmdb path, not the native writer)
        ds = open_datastore(uri)
        ds.put_many([recs[0][0]], [b"old"])
        ds.close()
    fs.fill(4 * MiB)  # the store needs ~9 MiB
    r = run_cli("restore", *opts, arch, uri)
    _assert_clean_failure(r, fs)
    fs.unfill()
    r = run_cli("restore", *opts, arch, uri)
    assert r.returncode == 0, r.stderr
    assert _content(uri) == dict(recs)
    assert not [p for p in fs.path.iterdir() if "dsbackup" in p.name]


def test_backup_on_a_full_disk(tmp_path, small_fs, make_archive, run_cli):
    recs = _records()
    src = f"lmdb:{tmp_path / 'src'}"
    ds = open_datastore(src)
    ds.put_many([k for k, _ in recs], [v for _, v in recs])
    ds.close()
    fs = small_fs(32 * MiB)
    fs.fill(3 * MiB)  # the archive needs ~9 MiB (random values do not compress)
    out = fs.path / "b.tar.gz"
    r = run_cli("backup", src, out)
    _assert_clean_failure(r, fs)
    assert sorted(p.name for p in fs.path.iterdir()) == ["filler"]  # nothing partial
    fs.unfill()
    r = run_cli("backup", src, out)
    assert r.returncode == 0, r.stderr
    assert run_cli("verify", out).returncode == 0
    r = run_cli("restore", out, f"lmdb:{tmp_path / 'back'}")
    assert r.returncode == 0 and _content(f"lmdb:{tmp_path / 'back'}") == dict(recs)


def test_migrate_on_a_full_disk(tmp_path, small_fs, run_cli):
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
    r = run_cli("migrate", plan, src, dst)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "no space left" in r.stderr.lower()
    fs.unfill()
    r = run_cli("migrate", plan, src, dst, "--resume")
    if r.returncode != 0:  # a failed copy is rolled back: the run starts afresh
        r = run_cli("migrate", plan, src, dst)
    assert r.returncode == 0, r.stderr
    assert _content(dst) == dict(recs)
