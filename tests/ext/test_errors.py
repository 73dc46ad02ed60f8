"""The native modules' exceptions are DsBackupError subclasses carrying the documented exit
code (docs/EXIT_CODES.md), keep their former built-in base, and reach the command line as one
line with that code."""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

import dsbackup._ext
from dsbackup._ext import compress, framing, lmdbcopy, lmdbregistry, lmdbscan, lmdbwrite, seal
from dsbackup.errors import (
    ArchiveError,
    DatastoreError,
    DsBackupError,
    IntegrityError,
    InvalidKey,
    LmdbOSError,
    exit_code_table,
)

ROOT = Path(__file__).resolve().parents[2]

# class -> (its DsBackupError parent, its former built-in base, exit code)
NATIVE = {
    compress.MemberError: (IntegrityError, ValueError, 3),
    compress.CompressionError: (ArchiveError, RuntimeError, 2),
    seal.SealError: (ArchiveError, RuntimeError, 2),
    framing.FramingError: (IntegrityError, ValueError, 3),
    lmdbwrite.PayloadError: (IntegrityError, ValueError, 3),
    lmdbscan.LmdbError: (DatastoreError, OSError, 2),
    lmdbregistry.DoubleOpenError: (DatastoreError, RuntimeError, 2),
    lmdbwrite.LmdbWriteError: (DatastoreError, OSError, 2),
    lmdbwrite.LmdbNoSpace: (DatastoreError, OSError, 2),
    lmdbwrite.LmdbKeyTooLong: (InvalidKey, OSError, 2),
    lmdbcopy.LmdbCopyError: (DatastoreError, OSError, 2),
    lmdbcopy.LmdbCopyNoSpace: (DatastoreError, OSError, 2),
}


@pytest.mark.parametrize("cls", list(NATIVE), ids=lambda c: c.__name__)
def test_native_class_is_a_dsbackup_error_with_its_exit_code(cls) -> None:
    parent, builtin, code = NATIVE[cls]
    assert issubclass(cls, DsBackupError) and issubclass(cls, parent)
    assert issubclass(cls, builtin)
    assert cls.exit_code == code
    assert cls.description and cls.description != parent.description
    # the generated exit code table names it in its code's row
    row = next(r for r in exit_code_table().splitlines() if r.startswith(f"| {code} |"))
    assert f"`{cls.__name__}`" in row


def test_every_native_exception_class_is_covered() -> None:
    modules = [importlib.import_module(f"dsbackup._ext.{m.name}")
               for m in pkgutil.iter_modules(dsbackup._ext.__path__)]
    found = {v for m in modules for v in vars(m).values()
             if isinstance(v, type) and issubclass(v, BaseException)
             and v.__module__ == m.__name__}
    assert found == set(NATIVE)


def test_exit_code_doc_names_the_native_classes() -> None:
    doc = (ROOT / "docs" / "EXIT_CODES.md").read_text()
    assert exit_code_table() in doc
    for cls in NATIVE:
        assert f"`{cls.__name__}`" in doc


def test_raised_from_native_code() -> None:
    with pytest.raises(IntegrityError, match="invalid deflate data") as info:
        compress.inflate_raw(b"\x07" + b"\x00" * 16, 65536)
    assert type(info.value) is compress.MemberError and info.value.exit_code == 3
    with pytest.raises(IntegrityError, match="magic") as info2:
        framing.decode_records(b"XXXX" + b"\x00" * 12)
    assert type(info2.value) is framing.FramingError and info2.value.offset == 0
    assert info2.value.chunk is None  # IntegrityError's attributes are there too


def test_lmdb_errors_from_native_code(tmp_path) -> None:
    env = lmdb.open(str(tmp_path / "db"), max_dbs=2, map_size=1 << 20)
    env.close()
    kw = {"chunk_size": 10, "chunk_max_bytes": 1 << 20, "level": -1}
    with pytest.raises(DatastoreError, match=r"\(LMDB error -30798\)$") as info:
        lmdbscan.LmdbRangeScanner(str(tmp_path / "db"), db_name=b"missing", **kw)
    assert type(info.value) is lmdbscan.LmdbError and info.value.exit_code == 2
    with lmdbwrite.LmdbPayloadWriter(tmp_path / "w") as w:
        with pytest.raises(DatastoreError, match="already open") as info2:
            lmdbscan.LmdbRangeScanner(str(tmp_path / "w"), **kw)
        assert type(info2.value) is lmdbregistry.DoubleOpenError
        assert lmdbscan.DoubleOpenError is lmdbregistry.DoubleOpenError
        with pytest.raises(IntegrityError, match="magic") as info3:
            w.write([b"XXXX" + b"\x00" * 12])
        assert info3.value.index == 0 and info3.value.exit_code == 3
        long_key = framing.encode_records([b"/a" + b"x" * 600], [b"1"])
        with pytest.raises(InvalidKey, match="key size limit"):
            w.write([long_key])
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "data.mdb").write_bytes(b"\xff" * 16384)
    with pytest.raises(DatastoreError, match=r"cannot open LMDB environment: .*\(LMDB error "
                                             r"-30793\)") as info4:
        lmdbwrite.LmdbPayloadWriter(garbage)
    assert type(info4.value) is lmdbwrite.LmdbWriteError


def test_errno_errors_keep_errno_and_print_their_message() -> None:
    e = lmdbwrite.LmdbNoSpace("/x: no space left on device (needed 5 bytes, free 1)", 5, 1)
    assert e.errno == errno.ENOSPC and (e.needed, e.free) == (5, 1)
    assert str(e) == "/x: no space left on device (needed 5 bytes, free 1)"
    c = lmdbcopy.LmdbCopyError(errno.EIO, "/y: cannot reserve space: Input/output error")
    assert c.errno == errno.EIO and str(c) == "/y: cannot reserve space: Input/output error"
    assert str(lmdbwrite.LmdbWriteError("/z: sync: MDB_PANIC (LMDB error -30795)")) == \
        "/z: sync: MDB_PANIC (LMDB error -30795)"
    # both print through the one shared __str__ (errors.LmdbOSError)
    assert issubclass(lmdbwrite.LmdbWriteError, LmdbOSError)
    assert issubclass(lmdbcopy.LmdbCopyError, LmdbOSError)
    w = lmdbwrite.LmdbWriteError(errno.EIO, "/w: cannot write: Input/output error")
    assert str(w) == "/w: cannot write: Input/output error"


def test_native_error_reaches_the_cli_as_one_line(tmp_path) -> None:
    src = tmp_path / "src"
    env = lmdb.open(str(src), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"/a", b"1")
    env.close()
    archive = tmp_path / "a.tar.gz"
    run_env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}", str(archive)],
                       capture_output=True, text=True, env=run_env, timeout=120)
    assert r.returncode == 0, r.stderr
    target = tmp_path / "t"
    target.mkdir()
    (target / "data.mdb").write_bytes(b"\xff" * 16384)  # not an LMDB file
    r = subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(archive),
                        f"lmdb:{target}"], capture_output=True, text=True, env=run_env,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("dsbackup: error: ")
    assert str(target) in lines[0] and "(LMDB error -30793)" in lines[0]
