"""The restore journal: which chunks of a restore are safely on disk, and its syncs.

The journal (`<target>.dsbackup-restore.json`) names the first chunk not yet known to be on
disk; a rerun after a crash resumes there. It may only advance after a sync of the target,
and a sync waits for the disk. `JournalSync` does that sync and the journal update in a
thread, so the restore keeps inflating and writing meanwhile: inline, these syncs took a
large share of a restore into LMDB (docs/PERFORMANCE.md, "Measurements behind the code").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dsbackup.background import BackgroundCall
from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.errors import DatastoreError
from dsbackup.filemodes import private_mode


def journal_path(store_dir: Path | None) -> Path | None:
    """`<target>.dsbackup-restore.json` beside a store's filesystem path (None: a memory
    store, no journal)."""
    return None if store_dir is None else store_dir.with_name(
        store_dir.name + ".dsbackup-restore.json")


def refuse_unfinished_restore(store_dir: Path | None, what: str) -> None:
    """A store that a restore began and did not finish holds part of an archive: backing it
    up would archive half a store and call it done (a nightly schedule would then rotate
    the good backups out). DatastoreError (exit 2) naming the journal."""
    jpath = journal_path(store_dir)
    if jpath is not None and jpath.exists():
        raise DatastoreError(
            f"{store_dir}: a restore into it did not finish ({jpath} is its journal), so it "
            f"may hold part of an archive; run that restore again to finish it before you "
            f"{what}, or remove the journal once the store is known to be whole")


def write_journal(path: Path, state: dict[str, Any]) -> None:
    """Replace the journal at `path` with `state` (written, fsynced, renamed)."""
    # a temp name of this process and call, made as tempfile.mkstemp makes one (O_EXCL, mode
    # 0600) without importing tempfile (random, shutil: a restore's start-up)
    while True:
        tmp = path.with_name(f"{path.name}.tmp-{os.urandom(6).hex()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _journal_error(path, exc) from None
    try:
        os.fchmod(fd, private_mode())
        with open(fd, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _journal_error(path, exc) from None
        raise


def _journal_error(path: Path, exc: OSError) -> DatastoreError:
    if is_no_space(exc):
        return DatastoreError(no_space_message(
            path, what="the restore journal could not be updated; free some space and rerun "
                       "the same restore: it resumes"))
    return DatastoreError(f"{path}: cannot write the restore journal: "
                          f"{exc.strerror or exc}")


class JournalSync:
    """`start(next_chunk)`: in a thread, fdatasync the file open at `fd` (every chunk before
    `next_chunk` has been committed to it), then record `next_chunk` in the journal. One
    at a time (`busy`); `wait()` joins it and raises its error as a DatastoreError.

    `fd` may be a read-only descriptor: fdatasync writes the file's dirty pages, including
    those written through a shared mapping (LMDB's MDB_WRITEMAP), whoever dirtied them."""

    def __init__(self, fd: int, journal: Path, state: dict[str, Any], what: str) -> None:
        self._fd = fd
        self._journal = journal
        self._state = dict(state)
        self._what = what
        self._call = BackgroundCall("dsbackup-restore-sync")
        self.completed = 0  # journal updates done (for tests)

    @property
    def busy(self) -> bool:
        return self._call.busy

    def start(self, next_chunk: int, *, sync_target: bool = True) -> None:
        """`sync_target=False`: only write the journal (the first one, before anything of
        the target is written)."""
        self.wait()
        self._call.start(self._run, {**self._state, "next_chunk": next_chunk}, sync_target)

    def _run(self, state: dict[str, Any], sync_target: bool) -> None:
        if sync_target:
            os.fdatasync(self._fd)
        write_journal(self._journal, state)
        self.completed += 1

    def wait(self) -> None:
        try:
            self._call.wait()
        except Exception as error:  # the thread's: said as the restore's error
            if isinstance(error, DatastoreError):
                raise error
            if is_no_space(error):
                raise DatastoreError(no_space_message(
                    self._what, what="free some space and rerun the same restore: it "
                                     "resumes")) from error
            raise DatastoreError(f"{self._what}: sync failed: {error}") from error
