"""LevelDbDatastore's errors: a lock held by another process is LockedError (exit 4); a file
where the store's directory belongs is not (it named a LOCK file and was taken for one)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dsbackup.datastores.leveldb import LevelDbDatastore
from dsbackup.errors import LockedError


def test_a_file_in_place_of_the_store_is_no_lock(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(Exception) as info:
        LevelDbDatastore(f)
    assert not isinstance(info.value, LockedError)
    assert str(info.value) == f"{f}: not a directory (LevelDB is a directory)"


def test_a_store_open_in_another_process_is_locked(tmp_path):
    path = tmp_path / "db"
    LevelDbDatastore(path).close()
    holder = subprocess.Popen([sys.executable, "-c", "import plyvel, sys; db = plyvel.DB("
                               f"{str(path)!r}); print('open', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(LockedError, match="Resource temporarily unavailable"):
            LevelDbDatastore(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
