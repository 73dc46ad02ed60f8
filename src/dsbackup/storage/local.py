"""Local files: a temp file beside the destination, written with writev, synced early and
fsynced, then linked into place (never replacing a file unless asked); reads with pread."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from dsbackup._ext.checksum import xxh3_64_file
from dsbackup.background import BackgroundCall
from dsbackup.diskspace import free_bytes, is_no_space, no_space_message
from dsbackup.errors import (
    ArchiveError,
    ArchiveExistsError,
    ArchiveUnavailable,
    IntegrityError,
    LockedError,
)
from dsbackup.filemodes import private_mode
from dsbackup.storage import resumestate
from dsbackup.storage.base import Check
from dsbackup.storage.tempfiles import (
    fsync_dir,
    live_writer,
    lock_temp_file,
    remove_stale_temp_files,
    temp_path_for,
)
from dsbackup.storage.writeback import SEALING_SYNC_STEP, Writeback


def exists_message(path: object) -> str:
    return (f"{path}: already exists; not replacing it (give --overwrite to replace an "
            "archive no other archive depends on)")


def _not_a_file(path: Path) -> str | None:
    """What is at `path` (a symlink followed) when it is there and no regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there, or a dangling symlink
        return None
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None


class LocalSink:
    """A new archive file. The temp file is locked while written (leftover cleanup skips it);
    leftovers of dead writers in the same directory are removed first (``removed_leftovers``)."""

    _on_failure = "the temporary file is removed"  # what abort() does, said on a full disk

    def __init__(self, path: Path, *, overwrite: bool = False) -> None:
        self.final = path
        self.overwrite = overwrite
        if not path.parent.is_dir():
            raise ArchiveError(f"{path}: directory {path.parent} does not exist")
        if path.is_dir():
            raise ArchiveError(f"{path}: is a directory")
        if not overwrite and os.path.lexists(path):
            raise ArchiveExistsError(exists_message(path))
        what = _not_a_file(path)
        if what is not None:  # `--overwrite` replaces archives, not /dev/null or a FIFO
            raise ArchiveExistsError(f"{path}: is {what}, not an archive file; not replacing "
                                     "it, even with --overwrite")
        writer = live_writer(path)
        if writer is not None:  # it would fail (or be replaced) at the end, its work wasted
            raise LockedError(f"{path}: another dsbackup process (PID {writer[0]}) is writing "
                              f"this archive ({writer[1].name}); wait for it to finish")
        self.removed_leftovers = remove_stale_temp_files(path)
        self.tmp = temp_path_for(path)
        self._fd = -1
        try:
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               private_mode())  # 0600 unless --umask says otherwise
            try:
                lock_temp_file(self._fd)  # marks a live writer: leftover cleanup skips it
            except OSError:
                pass  # a filesystem without flock: the PID in the name still protects it
            self._pos = 0
            self._closed = False
            self._writeback = Writeback(self._fd)
        except OSError as exc:
            if self._fd >= 0:  # made, then failed: not left behind
                self._discard_unopened()
            raise ArchiveError(f"{path}: cannot create temporary file: {exc}") from exc
        except BaseException:  # a signal (Ctrl-C, SIGTERM) before the caller holds us
            self._discard_unopened()
            raise

    def _discard_unopened(self) -> None:
        """Close and remove the temp file of a constructor that did not finish (its name
        holds our PID and a random part: if it exists, it is ours)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def write(self, pieces: Sequence[bytes | memoryview]) -> int:
        views = [memoryview(p) for p in pieces if len(p)]
        total = 0
        try:
            while views:
                n = os.writev(self._fd, views)
                total += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if views and n:
                    views[0] = views[0][n:]
            self._pos += total
            self._writeback.advance(self._pos)
        except OSError as exc:
            raise self._no_space(exc) from exc
        return total

    def _no_space(self, exc: OSError) -> OSError | ArchiveError:
        """A full disk as docs/CLI.md words it (`PATH: no space left on MOUNT ...`)."""
        if not is_no_space(exc):
            return exc
        return ArchiveError(no_space_message(self.final, free=free_bytes(self.tmp.parent),
                                             what=self._on_failure))

    def commit(self, check: Check | None = None) -> None:
        """fsync, meanwhile `check(temp_path)`; link into place once both are done."""
        # the check reads the file back while fsync waits; neither waits for an early sync
        # still running (it ends before the final fsync can, and its error is raised below)
        synced = BackgroundCall("dsbackup-fsync")  # the GIL is released while it waits
        synced.start(os.fsync, self._fd)
        try:
            if check is not None:
                check(self.tmp)
        finally:
            early: OSError | None = None
            try:
                self._writeback.close()
            except OSError as exc:
                early = exc  # raised once the final fsync has ended, before its error
            try:
                synced.wait()
            except OSError as exc:
                raise ArchiveError(f"fsync of the archive failed: {exc}") from exc
            finally:
                if early is not None:
                    raise self._no_space(early) from early
        resumestate.clear(self._fd)  # the resume notes of the temp file (none: a no-op)
        self._place()
        os.close(self._fd)
        self._closed = True
        fsync_dir(self.final.parent)

    # -- an encrypted archive's sealing state, for a later --resume (dsbackup.storage.resumestate)

    def set_sealing(self, state: bytes, *, durable: bool = False) -> bool:
        return resumestate.set_sealing(self._fd, state, durable=durable)

    def forget_sealing(self) -> bool:
        return resumestate.forget_sealing(self._fd)

    def sync_sooner(self) -> None:
        """Early syncs every SEALING_SYNC_STEP: an encrypted archive's writer fsyncs this file
        before it seals its index (`finishing`, durable), with nothing else to do meanwhile;
        that fsync then has 16 MiB at most to wait for, not 64 (docs/PERFORMANCE.md)."""
        self._writeback.sync_step = SEALING_SYNC_STEP

    def _place(self) -> None:
        """Move the finished temp file to the final name (while its lock is still held)."""
        if self.overwrite:
            os.rename(self.tmp, self.final)
            return
        try:
            os.link(self.tmp, self.final)  # fails if the name exists: nothing is replaced
        except FileExistsError:
            raise ArchiveExistsError(exists_message(self.final)) from None
        except OSError:  # no hard links here (some FUSE, SMB): check, then rename
            if os.path.lexists(self.final):
                raise ArchiveExistsError(exists_message(self.final)) from None
            os.rename(self.tmp, self.final)
            return
        os.unlink(self.tmp)

    def release(self) -> None:
        """Close the file, keeping it: resumable again once this process is gone (cut back
        to its last whole, checked member by the next resume)."""
        if not self._closed:
            self._closed = True
            try:
                self._writeback.close()
            finally:
                os.close(self._fd)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._writeback.close()
            except OSError:
                pass  # the archive is being discarded anyway
            try:
                os.close(self._fd)
            except OSError:
                pass
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


class ResumedSink(LocalSink):
    """A dead writer's temp file taken over to be continued (docs/FORMAT.md §11.5): `fd` is
    open read-write on `tmp` and holds its lock; the file is cut to `length` (the end of its
    last whole, checked member) and written on from there.

    A resumed run that fails (a full disk, a store error, Ctrl-C, SIGTERM, --timeout) keeps
    the file: it holds the killed runs' work, which the next ``--resume`` continues (its torn
    last member cut off, every kept member checked again). It is put back under `kept_as`
    (the dead writer's name it was taken from), so that this process, if it lives on (the
    Python API), can resume it too. `discard()` removes it (a whole archive whose check
    failed)."""

    keep_when_cancelled = True
    _on_failure = "the temporary file is kept: free space and run backup --resume again"

    def __init__(self, final: Path, tmp: Path, fd: int, length: int, *,
                 overwrite: bool = False, kept_as: Path | None = None) -> None:
        self.final, self.tmp, self.overwrite = final, tmp, overwrite
        self._kept_as = kept_as
        self._fd = fd
        self._closed = False
        try:
            os.ftruncate(fd, length)
            os.lseek(fd, length, os.SEEK_SET)
            os.fsync(fd)  # a kill now leaves the file resumable again
        except OSError as exc:
            os.close(fd)
            raise ArchiveError(f"{final}: cannot truncate {tmp} to resume it: {exc}") from exc
        self.removed_leftovers = remove_stale_temp_files(final)  # ours is locked: kept
        self._pos = length
        self._writeback = Writeback(fd)

    def release(self) -> None:
        """Close the file before anything was written to it, keeping it: cut at a whole
        member, it is resumable again (under `kept_as`)."""
        self.abort()

    def abort(self) -> None:
        """Close the file, keeping it for the next ``--resume`` (see the class)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._writeback.close()  # (a full disk: its error is the one raised already)
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if self._kept_as is not None:
            with contextlib.suppress(OSError):  # (gone: placed, or removed by hand)
                os.rename(self.tmp, self._kept_as)

    def discard(self) -> None:
        """Close and remove the file (nothing at the final path either)."""
        LocalSink.abort(self)


OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


def out_of_files(path: Path, exc: OSError) -> ArchiveUnavailable:
    """The error for an archive that could not be opened because this process (EMFILE) or
    the system (ENFILE) has too many files open, with its errno: not a sign of a missing or
    damaged archive, so the search for a parent archive does not take it for one (it said
    "parent archive P was altered or replaced: P (not a readable archive)")."""
    err = ArchiveUnavailable(
        f"{path}: cannot open: {exc.strerror} (every archive of a parent chain is held open: "
        "raise the open-file limit, ulimit -n)")
    err.errno = exc.errno  # type: ignore[attr-defined]
    return err


class LocalSource:
    """An archive file opened for pread (no shared cursor: thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.location = path
        try:
            # O_NONBLOCK: opening a FIFO with no writer would otherwise wait for ever
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ArchiveUnavailable(f"{path}: no such archive") from None
        except IsADirectoryError:
            raise ArchiveUnavailable(f"{path}: is a directory, not an archive") from None
        except OSError as exc:
            if exc.errno in OUT_OF_FILES:
                raise out_of_files(path, exc) from None
            raise ArchiveUnavailable(f"{path}: cannot open: {exc.strerror}") from None
        st = os.fstat(self._fd)
        if stat.S_ISDIR(st.st_mode):  # open(2) accepts a directory; read(2) would not
            self.close()
            raise ArchiveUnavailable(f"{path}: is a directory, not an archive")
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):  # no random access
            self.close()
            raise ArchiveUnavailable(f"{path}: is a pipe, not an archive file (give - to read "
                                     "an archive from standard input)")
        os.set_blocking(self._fd, True)
        self.size = st.st_size

    def identity(self) -> str:
        """The open file's device, inode, size and modification and change times (fstat): it
        differs once the file is written (even in place at its old size) or is another file."""
        st = os.fstat(self._fd)
        return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    def still_at_location(self) -> bool:
        """Whether the path (a symlink followed) still names the file opened, at the size it
        had then: False once it was deleted, or another file was renamed or linked there."""
        try:
            now = os.stat(self.location)
        except OSError:
            return False
        st = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and st.st_size == self.size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise IntegrityError(f"{self.location}: short read at offset {offset} (file "
                                 "changed?)")
        return data

    def read_into(self, offset: int, buf: memoryview) -> None:
        """`read` into `buf` (all of it): a reader's reused buffer, no bytes object."""
        if os.preadv(self._fd, [buf], offset) != len(buf):
            raise IntegrityError(f"{self.location}: short read at offset {offset} (file "
                                 "changed?)")

    def xxh3(self, offset: int, length: int) -> int:
        try:
            return xxh3_64_file(self._fd, offset, length)
        except EOFError:
            raise IntegrityError(f"{self.location}: short read at offset {offset} (file "
                                 "changed?)") from None

    def close(self) -> None:
        # -1 first: a second close must not close the number again once it is reused
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)


def list_archives(directory: Path) -> list[Path]:
    """Candidate archive files of a directory: regular, not hidden (temp files are)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [directory / n for n in names if not n.startswith(".") and (directory / n).is_file()]
