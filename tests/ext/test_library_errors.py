"""Errors from the C libraries keep the library's return code beside its text."""

from __future__ import annotations

import re

import lmdb
import pytest

from dsbackup._ext import compress, lmdbscan
from tests.ext.test_lmdbscan import scan


def test_isal_inflate_error_names_its_return_code() -> None:
    # a block header of type 3 (reserved): ISA-L rejects it as an invalid block
    with pytest.raises(compress.MemberError,
                       match=r"invalid deflate data \(invalid block, ISA-L isal_inflate "
                             r"returned -1\)"):
        compress.inflate_raw(b"\x07" + b"\x00" * 16, 65536)


def test_lmdb_error_names_its_return_code(tmp_path) -> None:
    env = lmdb.open(str(tmp_path / "db"), max_dbs=2, map_size=1 << 20)
    env.close()
    with pytest.raises(lmdbscan.LmdbError) as info:
        scan(tmp_path / "db", db_name=b"missing")
    # MDB_NOTFOUND is -30798: the number beside mdb_strerror's text
    assert re.search(r"cannot open database.*\(LMDB error -30798\)$", str(info.value))
