"""`make wheel-test`: the repaired wheel, installed alone in a new venv, does a verified round trip.

Run with that venv's interpreter in isolated mode (`python -I`) from outside the source tree,
so only the installed wheel can be imported. Checks:
- the extension modules load and link no libisal/libxxhash/liblmdb/libcrypto/libzstd from the
  system (ldd);
- `dsbackup backup`, `verify`, `restore` of a small generated LMDB store give exit 0, with the
  default codec and with `--codec zstd` (docs/FORMAT.md §11.6: the bundled libzstd);
- the restored store equals the source record for record;
- the public API imports and reads the archive.
Exits non-zero with a one-line reason on any failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SYSTEM_LIBS = ("libisal", "libxxhash", "liblmdb", "libcrypto", "libzstd")


def fail(msg: str) -> None:
    print(f"wheel smoke test FAILED: {msg}", file=sys.stderr)
    raise SystemExit(1)


def check_not_from_source_tree() -> Path:
    import dsbackup

    pkg = Path(dsbackup.__file__).resolve().parent
    if "site-packages" not in pkg.parts:
        fail(f"dsbackup imported from {pkg}, not from the installed wheel")
    return pkg


def check_linkage(pkg: Path) -> int:
    sos = sorted((pkg / "_ext").glob("*.so"))
    if not sos:
        fail(f"no extension modules in {pkg / '_ext'}")
    for so in sos:
        out = subprocess.run(["ldd", str(so)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            name, _, target = line.strip().partition(" => ")
            if name.startswith(SYSTEM_LIBS) and not target.startswith(str(pkg.parent)):
                fail(f"{so.name} links {name} from {target or 'the system'}")
    return len(sos)


def make_store(path: Path) -> dict[bytes, bytes]:
    import lmdb

    records = {f"/blocks/CIQ{i:06d}".encode(): os.urandom(4096) + bytes(i % 256 for _ in range(4096))
               for i in range(300)}
    records.update({f"/pins/{i:04d}".encode(): f"pin {i}".encode() for i in range(200)})
    records[b"/empty"] = b""
    env = lmdb.open(str(path), map_size=64 << 20)
    with env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k, v)
    env.close()
    return records


def read_store(path: Path) -> dict[bytes, bytes]:
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    return out


def run_cli(*args: str) -> None:
    exe = Path(sys.executable).parent / "dsbackup"
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"dsbackup {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")


def main() -> None:
    pkg = check_not_from_source_tree()
    n_so = check_linkage(pkg)
    tmp = Path(tempfile.mkdtemp(prefix="dsbackup-wheel-"))
    try:
        source = tmp / "store"
        records = make_store(source)
        archive = tmp / "store.tar.gz"
        for codec, name in (("gzip", "store.tar.gz"), ("zstd", "zstd.tar.gz")):
            arc = tmp / name
            run_cli("backup", f"lmdb:{source}", str(arc), "--codec", codec)
            run_cli("verify", str(arc))
            run_cli("restore", str(arc), f"lmdb:{tmp / ('restored-' + codec)}")
            if read_store(tmp / f"restored-{codec}") != records:
                fail(f"the store restored from the {codec} archive differs from the source")
        from dsbackup import BackupManager

        report = BackupManager().verify_backup(str(archive))
        if not report.ok:
            fail(f"BackupManager.verify_backup says {report}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wheel smoke test ok: {pkg} ({n_so} extension modules, bundled libraries), "
          f"{len(records)} records backed up (gzip and zstd), verified and restored exactly")


if __name__ == "__main__":
    main()
