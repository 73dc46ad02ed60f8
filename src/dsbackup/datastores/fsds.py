"""``fsds:PATH``: the layout of js-stores' ``datastore-fs`` (Helia's file datastore).

Key ``/a/b/c`` is the file ``PATH/a/b/c.data`` holding the raw value; directories nest as
the key's namespaces do and an empty value is an empty file. There are no metadata files.
A key whose components cannot be file names (empty, ``.`` or ``..``, a NUL byte, longer
than the file system's 255-byte name limit with ``.data``) is refused with
:class:`~dsbackup.errors.InvalidKey` naming the key.

Writes go to a hidden temp file in the target directory that is fsynced and renamed into
place (atomic per file); files get the umask's mode (0644 under umask 022), directories
0777 less the umask. Opening, reading and scanning create nothing.

Scans list the whole tree once (keys are held in memory, about 100 bytes a key: the
datastores this layout serves are small) and read files in key order; files that vanish
or cannot be read are counted in :attr:`FsDatastore.skipped`. :meth:`audit_files` names
every file that is not a record (no ``.data`` suffix, a stray temp file, a symlink), except
the ``.<name>.data.tmp`` files datastore-fs's writer (steno) leaves when stopped mid-write,
and this package's own ``.<name>.data.tmp-XXXXXXXX`` (a killed restore's), which are counted
in ``temp_files``.
"""

from __future__ import annotations

import bisect
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dsbackup.datastores.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    BaseDatastore,
    batch_items,
)
from dsbackup.datastores.flatfs_audit import STENO_TEMP, FileAudit, SkippedFiles
from dsbackup.errors import DatastoreError, InvalidKey, NotFound
from dsbackup.filemodes import process_umask
from dsbackup.storage.tempfiles import fsync_dir

# this package's own temp file beside a value file (_write: mkstemp's 8 random characters),
# left by a killed restore: counted in temp_files as steno's are
OWN_TEMP_INFIX = b".tmp-"
OWN_TEMP = re.compile(rb"\.(.+)\.tmp-[a-z0-9_]{8}")

__all__ = ["FsDatastore", "open_fsds", "EXTENSION"]

EXTENSION = b".data"
_NAME_MAX = 255


def _file_mode() -> int:
    """0666 less the process umask (read once per open, without changing it)."""
    return 0o666 & ~process_umask()


class FsDatastore(BaseDatastore):
    """A datastore-fs directory."""

    scheme = "fsds"
    parallel_readable = False

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 sync: bool = True) -> None:
        self.path = Path(path).absolute()
        self._root = os.fsencode(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise DatastoreError(f"{self.path}: not a directory (fsds is a directory)")
        if not self.path.is_dir():
            if readonly:
                raise DatastoreError(f"{self.path}: fsds directory does not exist")
            self.path.mkdir(mode=0o777, parents=True)
        super().__init__(f"fsds:{self.path}", readonly=readonly,
                         location=str(self.path))
        self.sync_writes = sync
        self._mode = _file_mode()
        self.skipped = SkippedFiles()

    # -- key <-> path --------------------------------------------------------------------
    def _path_of(self, key: bytes) -> bytes | None:
        """The file of a key, or None when the key cannot be a path of this layout."""
        if len(key) < 2 or key[:1] != b"/" or b"\x00" in key:
            return None
        parts = key[1:].split(b"/")
        for p in parts:
            if p in (b"", b".", b"..") or len(p) > _NAME_MAX:
                return None
        if len(parts[-1]) + len(EXTENSION) > _NAME_MAX:
            return None
        return self._root + key + EXTENSION

    def _validate_key(self, key: bytes) -> None:
        if self._path_of(key) is None:
            raise InvalidKey(
                f"key {key[:120]!r} cannot be stored in {self.path}: fsds (datastore-fs) "
                "keys are '/'-separated names, each non-empty, not '.' or '..', without NUL "
                f"and at most {_NAME_MAX - len(EXTENSION)} bytes for the last one")

    # -- primitives ----------------------------------------------------------------------
    def _get(self, key: bytes) -> bytes:
        path = self._path_of(key)
        if path is None:
            raise NotFound(f"key {key!r} not found in {self.uri}")
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"key {key!r} not found in {self.uri}") from None

    def _get_size(self, key: bytes) -> int:
        path = self._path_of(key)
        try:
            if path is not None and os.path.isfile(path):
                return os.stat(path).st_size
        except OSError:
            pass
        raise NotFound(f"key {key!r} not found in {self.uri}")

    def _put(self, key: bytes, value: bytes) -> None:
        self._write(key, value)

    def _write(self, key: bytes, value: bytes) -> None:
        path = self._path_of(key)
        assert path is not None  # validated by the caller
        d = os.path.dirname(path)
        try:
            os.makedirs(d, 0o777, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidKey(f"key {key[:120]!r}: a parent namespace of it is stored as a "
                             f"value file in {self.path}, so it cannot be a directory") \
                from None
        fd, tmp = tempfile.mkstemp(prefix=b"." + os.path.basename(path) + OWN_TEMP_INFIX,
                                   dir=d)  # (the audit knows it: OWN_TEMP)
        try:
            os.fchmod(fd, self._mode)
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view):]
            if self.sync_writes:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            if os.path.isdir(path):
                raise InvalidKey(f"key {key[:120]!r}: {os.fsdecode(path)} is a directory in "
                                 f"{self.path} (another key's namespace)")
            os.rename(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        if self.sync_writes:
            fsync_dir(d)

    def _delete(self, key: bytes) -> None:
        path = self._path_of(key)
        if path is None:
            return
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass

    # -- listing and scans ---------------------------------------------------------------
    def _walk(self, audit: FileAudit | None = None) -> list[bytes]:
        """Every key (sorted); other files go to ``audit``."""
        keys: list[bytes] = []
        root_len = len(self._root)
        stack = [self._root]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        continue
                    name = e.name
                    rel = e.path[root_len:]
                    if (e.is_file(follow_symlinks=False) and name.endswith(EXTENSION)
                            and len(name) > len(EXTENSION)):
                        keys.append(rel[:-len(EXTENSION)])
                    elif audit is not None:
                        m = STENO_TEMP.fullmatch(name) or OWN_TEMP.fullmatch(name)
                        if (m and m.group(1).endswith(EXTENSION)
                                and e.is_file(follow_symlinks=False)):
                            audit.temp_files += 1  # datastore-fs's (steno's) or ours
                        else:
                            audit.add(os.fsdecode(rel[1:]))
        keys.sort()
        return keys

    def _keys_in(self, start: bytes, end: bytes | None) -> list[bytes]:
        keys = self._walk()
        lo = bisect.bisect_left(keys, start) if start else 0
        hi = bisect.bisect_left(keys, end) if end is not None else len(keys)
        return keys[lo:hi]

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        root = self._root
        for k in self._keys_in(start, end):
            path = root + k + EXTENSION
            try:
                with open(path, "rb") as f:
                    value = f.read()
            except OSError as e:
                self.skipped.add(path, e)
                continue
            yield k, value

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        root = self._root
        for k in self._keys_in(start, end):
            try:
                yield k, os.stat(root + k + EXTENSION).st_size
            except FileNotFoundError:
                continue

    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        self._check_open()
        yield from batch_items(self._iter_items(start, end), max_records, max_bytes)

    def approx_count(self) -> int:
        return len(self._walk())

    def approx_size(self) -> int:
        """The value bytes: every record file's size (one walk, an ``lstat`` a file; the
        datastores this layout serves are small)."""
        root, total = self._root, 0
        for k in self._walk():
            try:
                total += os.lstat(root + k + EXTENSION).st_size
            except OSError:  # removed meanwhile
                pass
        return total

    def is_empty(self) -> bool:
        return not self._walk()

    def audit_files(self) -> FileAudit:
        """Files under the root that are not records of this layout."""
        self._check_open()
        audit = FileAudit()
        self._walk(audit)
        return audit

    def sync(self, prefix: object = "/") -> None:
        self._check_open()


def open_fsds(path: str, *, readonly: bool = False, sync: bool | str = True) -> FsDatastore:
    from dsbackup.datastores.registry import _bool_param

    return FsDatastore(path, readonly=readonly, sync=_bool_param(sync, "sync"))
