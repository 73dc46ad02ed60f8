"""flatfs datastore, byte-compatible with go-ds-flatfs (Kubo's ``blocks/`` directory).

Each value is a file ``<root>/<shard>/<NAME>.data`` for key ``/NAME``. Writes go to a temp
file in ``.temp/`` that is renamed into place, so readers never see a partial value. A
directory without a ``SHARDING`` file opens when the shard function is given (``shard=``
argument or ``flatfs:PATH?shard=suffix/2``); such a directory gets no metadata files.
``name_prefix`` (Helia's blockstore-fs: ``B``, the multibase prefix) is put before the key's
name in file names: key ``/NAME`` is file ``<shard of BNAME>/BNAME.data``.

A writable open creates nothing until the first write: ``.temp/`` (cleaned like
go-ds-flatfs's open) and ``diskUsage.cache`` appear then, so a store opened writable but only
read (a migration's source) is left as it was. New value files get the mode their real
writer gives them: 0600 in a go-ds-flatfs directory (Go's ``os.CreateTemp``, renamed into
place, as Kubo's block files are), the umask's (0644 under umask 022) in a directory without
``SHARDING`` (Helia's blockstore-fs writes with Node's ``fs.writeFile``).

:meth:`FlatfsDatastore.audit_files` accounts for every file under the root (see
flatfs_audit.py); files that vanish or cannot be read during a scan are counted in
:attr:`FlatfsDatastore.skipped`.

Read-only opening changes nothing on disk: no ``.temp`` clean-up (go-ds-flatfs's own open
deletes it), no ``diskUsage.cache`` write, no directory creation; files are read with
``O_NOATIME`` where the kernel allows it.

Scans return keys in global sorted order and read each shard directory once. With
``prefix/N`` sharding shards are key ranges, so only one shard's names are held at a time;
otherwise the names in the scanned range are held natively up to ``max_names`` (default
1,000,000) and beyond that sorted through bucket files in a spill directory (``spill_dir``,
default ``$TMPDIR``; flatfs_listing.py, flatfs_spill.py).
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from urllib.parse import quote

from dsbackup.datastores.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    BaseDatastore,
    batch_items,
    unbatch,
)
from dsbackup.datastores.flatfs_audit import FileAudit, SkippedFiles
from dsbackup.datastores.flatfs_fastlist import FlatListing, list_flatfs
from dsbackup.datastores.flatfs_keybuckets import KeyBuckets
from dsbackup.datastores.flatfs_layout import (
    ACCURACY_EXACT,
    DEFAULT_SHARD,
    DISK_USAGE_FILE,
    EXTENSION,
    OWN_TEMP_PREFIX,
    SHARDING_FILE,
    TEMP_DIR,
    ShardFunc,
    encode_disk_usage,
    is_valid_key,
    is_valid_name,
    read_disk_usage,
    read_sharding,
    walk_disk_usage,
    write_sharding,
)
from dsbackup.datastores.flatfs_listing import ShardLister
from dsbackup.datastores.flatfs_sample import sample_mean_size
from dsbackup.errors import DatastoreError, InvalidKey, NotFound
from dsbackup.filemodes import process_umask
from dsbackup.storage.tempfiles import fsync_dir
from dsbackup.storage.writeback import start_writeback

__all__ = ["FlatfsDatastore", "StagedFiles", "open_flatfs", "DEFAULT_MAX_NAMES"]

DEFAULT_MAX_NAMES = 1_000_000
MAX_MAX_NAMES = 2**63 - 1  # the native scan's size_t (past it: an OverflowError)
DEFAULT_READ_AHEAD = 16
MAX_READ_AHEAD = 256  # descriptors held open at once: well under the usual 1024 limit
_EXT_LEN = len(EXTENSION)
_O_NOATIME = getattr(os, "O_NOATIME", 0)
NAME_MAX = 255  # longest file name on Linux file systems (a key's file is KEY.data)
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


class StagedFiles:
    """Temp files of :meth:`FlatfsDatastore.stage_many`: (temp path, record path) in key
    order, and the shard directories they go into."""

    __slots__ = ("files", "dirs")

    def __init__(self) -> None:
        self.files: list[tuple[bytes, bytes]] = []
        self.dirs: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.files)


class FlatfsDatastore(BaseDatastore):
    """A go-ds-flatfs directory."""

    scheme = "flatfs"
    parallel_readable = True

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 shard: str | ShardFunc | None = None, sync: bool = True,
                 max_names: int = DEFAULT_MAX_NAMES, read_ahead: int = DEFAULT_READ_AHEAD,
                 name_prefix: bytes = b"", metadata: bool = True,
                 spill_dir: str | None = None) -> None:
        self.path = Path(path).absolute()
        self._root = os.fsencode(self.path)
        self.sync_writes = sync
        self.read_ahead = read_ahead
        self.name_prefix = name_prefix
        if self.path.exists() and not self.path.is_dir():
            raise DatastoreError(f"{self.path}: not a directory (flatfs is a directory)")
        given = ShardFunc.parse(shard) if isinstance(shard, str) else shard
        recorded = read_sharding(str(self.path)) if self.path.is_dir() else None
        created = False
        if not self.path.is_dir():
            if readonly:
                raise DatastoreError(f"{self.path}: flatfs directory does not exist")
            self.path.mkdir(mode=0o777, parents=True)  # the umask decides, as in Go
            created = True
        self.go_layout = recorded is not None
        self._pending_sharding = False
        if recorded is not None:
            if given is not None and str(given) != str(recorded):
                raise DatastoreError(
                    f"{self.path}: specified shard function {given} does not match the "
                    f"directory's {SHARDING_FILE} ({recorded})")
            self.shard = recorded
        elif metadata and not readonly and _is_empty_dir(self.path):
            # a new go-ds-flatfs store: SHARDING is part of the layout (written now when we
            # made the directory, else with the first write)
            self.shard = given or ShardFunc.parse(DEFAULT_SHARD)
            self.go_layout = True
            self._pending_sharding = True
            if created:
                self._write_sharding()
        elif given is not None:
            self.shard = given
        else:
            raise DatastoreError(
                f"{self.path}: no {SHARDING_FILE} file; give the shard function "
                "(flatfs:PATH?shard=KIND/N); for a Helia blockstore-fs directory use "
                "helia:REPO, or flatfs:PATH?shard=suffix/2 (its names keep the 'B' prefix)")
        uri = f"flatfs:{self.path}"
        if not self.go_layout:
            uri += f"?shard={self.shard.kind}/{self.shard.param}"
        super().__init__(uri, readonly=readonly, location=str(self.path))
        self._dir_of = self.shard.dir_of
        self._lister = ShardLister(self._root, self.shard, _checked_max_names(max_names),
                                   name_prefix, spill_dir)
        self._noatime = _O_NOATIME
        self._lock = threading.Lock()
        self._du: int | None = None
        self._du_accuracy = ACCURACY_EXACT
        self._du_dirty = False
        # (file count, shard directories) of the last approx_count, taken by approx_size
        self._counted: tuple[int, list[bytes]] | None = None
        self._temp = os.path.join(self._root, TEMP_DIR.encode())
        # go-ds-flatfs's temp files come from os.CreateTemp (0600) and are renamed as they
        # are; mkstemp gives the same mode. Helia's (Node's writeFile): 0666 less the umask.
        self._mode: int | None = None if self.go_layout else _file_mode()
        self._writable_ready = readonly or not self.go_layout
        self.skipped = SkippedFiles()
        # staged writes (stage_many / commit_staged): shard directories known to exist, the
        # temp files written and not yet renamed in, and whether a shard directory was made
        # since the root was last fsynced
        self._known_dirs: set[bytes] = set()
        self._staged: set[bytes] = set()
        self._root_dirty = False
        self._tls = threading.local()
        self._thread_temps: list[bytes] = []
        self._syncers: Executor | None = None

    @property
    def open_uri(self) -> str:
        """:attr:`uri` with the listing settings that differ from the defaults
        (``max_names``, ``spill_dir``): what worker processes open, so that they list as
        this object does."""
        params = []
        if self.max_names != DEFAULT_MAX_NAMES:
            params.append(f"max_names={self.max_names}")
        if self._lister.spill_dir:
            params.append(f"spill_dir={quote(self._lister.spill_dir, safe='/')}")
        if not params:
            return self.uri
        return self.uri + ("&" if "?" in self.uri else "?") + "&".join(params)

    @property
    def max_names(self) -> int:
        """Names held in memory before a scan sorts through bucket files on disk."""
        return self._lister.max_names

    @max_names.setter
    def max_names(self, value: int) -> None:
        self._lister.max_names = _checked_max_names(value)

    # -- writable set-up, disk usage -----------------------------------------------------
    def _write_sharding(self) -> None:
        write_sharding(str(self.path), self.shard, sync=self.sync_writes)
        if self.sync_writes:
            fsync_dir(self._root)
        self._pending_sharding = False

    def _ensure_writable(self) -> None:
        """Before the first write to a go-ds-flatfs directory: SHARDING if it is new, a
        clean ``.temp/`` and the disk-usage count (nothing is written by opening alone)."""
        if self._writable_ready:
            return
        with self._lock:
            if self._writable_ready:
                return
            if self._pending_sharding:
                self._write_sharding()
            shutil.rmtree(self._temp, ignore_errors=True)  # as go-ds-flatfs's Open does
            os.mkdir(self._temp, 0o755)
            cached = read_disk_usage(str(self.path))
            if cached is not None:
                self._du, self._du_accuracy = cached
            else:
                self._du = walk_disk_usage(str(self.path))
                self._du_accuracy = ACCURACY_EXACT
                self._du_dirty = True
            self._writable_ready = True

    def _write_disk_usage(self) -> None:
        if self._du is None:
            return
        fd, tmp = tempfile.mkstemp(prefix=b"du-", dir=self._temp)
        try:
            os.write(fd, encode_disk_usage(self._du, self._du_accuracy))
            if self.sync_writes:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self._root, DISK_USAGE_FILE.encode()))
        if self.sync_writes:
            fsync_dir(self._root)  # the new count in place, not the old one after a crash
        self._du_dirty = False

    def _add_usage(self, delta: int) -> None:
        if self._du is not None and delta:
            with self._lock:
                self._du += delta
                self._du_dirty = True

    def disk_usage(self) -> int:
        """Bytes used, as go-ds-flatfs counts them (files and directories)."""
        if self._du is not None:
            return self._du
        cached = read_disk_usage(str(self.path)) if self.go_layout else None
        return cached[0] if cached else walk_disk_usage(str(self.path))

    # -- paths ---------------------------------------------------------------------------
    def _file(self, name: bytes) -> bytes:
        return b"%s/%s/%s.data" % (self._root, self._dir_of(name), name)

    def _validate_key(self, key: bytes) -> None:
        if not is_valid_key(key):
            raise InvalidKey(
                f"key {key[:80]!r} is not valid for flatfs ({self.path}): flatfs keys are "
                "'/' followed by 0-9, A-Z, '+', '-', '_' or '=' only (no lower case, no "
                "nested namespaces)")
        if len(key) - 1 + len(b".data") > NAME_MAX:
            raise InvalidKey(
                f"key {key[:40].decode()}... ({len(key)} bytes) is too long for flatfs "
                f"({self.path}): its file name would exceed {NAME_MAX} bytes")

    def _open_read(self, path: bytes) -> int:
        if self._noatime:
            try:
                return os.open(path, os.O_RDONLY | self._noatime)
            except PermissionError:
                self._noatime = 0  # not the file's owner: plain reads from now on
        return os.open(path, os.O_RDONLY)

    def _read(self, path: bytes) -> bytes:
        return _read_fd(self._open_read(path))

    # -- primitives ----------------------------------------------------------------------
    def _get(self, key: bytes) -> bytes:
        if not is_valid_key(key):
            raise NotFound(f"key {key!r} not found in {self.uri} (not a flatfs key)")
        try:
            return self._read(self._file(self.name_prefix + key[1:]))
        except FileNotFoundError:
            raise NotFound(f"key {key!r} not found in {self.uri}") from None

    def _get_size(self, key: bytes) -> int:
        if not is_valid_key(key):
            raise NotFound(f"key {key!r} not found in {self.uri} (not a flatfs key)")
        try:
            return os.stat(self._file(self.name_prefix + key[1:])).st_size
        except FileNotFoundError:
            raise NotFound(f"key {key!r} not found in {self.uri}") from None

    def _make_shard_dir(self, shard: bytes, *, staged: bool = False) -> bytes:
        """`staged`: the root is fsynced by the next commit_staged, not here."""
        d = b"%s/%s" % (self._root, shard)
        if staged and d in self._known_dirs:
            return d
        try:  # go-ds-flatfs: Mkdir(dir, 0755); Helia (Node's fs.mkdir): 0777; less the umask
            os.mkdir(d, 0o755 if self.go_layout else 0o777)
        except FileExistsError:
            if staged and d not in self._known_dirs:
                # made by a killed run (its entry in the root maybe never fsynced) or by
                # another thread still between its mkdir and the flag below: the next commit
                # fsyncs the root for it too (one fsync a batch at most)
                self._root_dirty = True
            self._known_dirs.add(d)
            return d
        self._add_usage(os.stat(d).st_size)
        if staged:
            self._root_dirty = True  # set after the mkdir: the next commit's fsync covers it
        elif self.sync_writes:
            fsync_dir(self._root)
        self._known_dirs.add(d)
        return d

    def _temp_file(self, shard_dir: bytes, staged: bool = False) -> tuple[int, bytes]:
        if staged and self.go_layout:
            return self._thread_temp_file()
        where = self._temp if self.go_layout else shard_dir
        prefix = b"temp-" if self.go_layout else OWN_TEMP_PREFIX  # (audit: OWN_TEMP)
        return tempfile.mkstemp(prefix=prefix, dir=where)

    def _thread_temp_file(self) -> tuple[int, bytes]:
        """A new file ``temp-<n>`` in this thread's directory of ``.temp/`` (mode 0600, as
        mkstemp's and Go's os.CreateTemp's), numbered in the thread: no random name per file."""
        tls = self._tls
        d = getattr(tls, "temp", None)
        if d is None:
            d = tls.temp = self._thread_temp_dir()
            tls.n = 0
        while True:
            tls.n += 1
            path = b"%s/temp-%d" % (d, tls.n)
            try:
                return os.open(path, _TEMP_FLAGS, 0o600), path
            except FileExistsError:
                continue

    def _write_temp(self, name: bytes, value: bytes, *, sync: bool = True,
                    staged: bool = False) -> tuple[bytes, bytes, bytes]:
        """`sync=False`: the caller fsyncs the temp file (a batch: _sync_all)."""
        d = self._make_shard_dir(self._dir_of(name), staged=staged)
        fd, tmp = self._temp_file(d, staged)
        try:
            if self._mode is not None:
                os.fchmod(fd, self._mode)
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view):]
            if sync and self.sync_writes:
                os.fsync(fd)
            elif self.sync_writes:
                start_writeback(fd)  # the batch's fsync (_sync_all) then waits for less
        except BaseException:
            os.close(fd)
            _unlink_quiet(tmp)
            raise
        os.close(fd)
        return tmp, b"%s/%s.data" % (d, name), d

    def _rename_in(self, tmp: bytes, dest: bytes) -> None:
        try:
            old = os.stat(dest).st_size
        except FileNotFoundError:
            old = 0
        try:
            os.rename(tmp, dest)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        self._add_usage(os.stat(dest).st_size - old)

    def _put(self, key: bytes, value: bytes) -> None:
        self._ensure_writable()
        tmp, dest, d = self._write_temp(self.name_prefix + key[1:], value)
        self._rename_in(tmp, dest)
        if self.sync_writes:
            fsync_dir(d)

    def _delete(self, key: bytes) -> None:
        if not is_valid_key(key):
            return
        self._ensure_writable()
        path = self._file(self.name_prefix + key[1:])
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return
        self._add_usage(-size)

    def _apply_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        puts = [(k, v) for k, v in ops if v is not None]
        if puts:
            self._put_pairs(puts)
        for k, v in ops:
            if v is None:
                self._delete(k)

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        """Write all temp files (fsynced when ``sync``), rename them in, then fsync each
        touched directory once."""
        self._check_put_many(keys, values)
        for k in keys:
            self._validate_key(k)
        self._put_pairs(list(zip(keys, values)))

    def _put_pairs(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._ensure_writable()
        staged: list[tuple[bytes, bytes]] = []
        dirs: set[bytes] = set()
        done = 0
        prefix = self.name_prefix
        one = len(pairs) == 1
        try:
            for k, v in pairs:
                tmp, dest, d = self._write_temp(prefix + k[1:], v, sync=one)
                staged.append((tmp, dest))
                dirs.add(d)
            if self.sync_writes and not one:  # every temp file durable before any rename
                _sync_all([tmp for tmp, _ in staged], os.O_RDONLY)
            for tmp, dest in staged:
                self._rename_in(tmp, dest)
                done += 1
        finally:
            for tmp, _ in staged[done:]:
                _unlink_quiet(tmp)
        if self.sync_writes:
            _sync_all(sorted(dirs), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    # -- staged writes (a restore: files written in its inflate threads) ----------------
    stages_files = True

    def stage_many(self, keys: list[bytes], values: list[bytes]) -> StagedFiles:
        """Write a temp file for each record (thread-safe: a restore calls it from its
        inflate threads), not fsynced, their writeback started; nothing is visible under a
        record's name until :meth:`commit_staged`. Every key is checked first."""
        self._check_put_many(keys, values)
        for k in keys:
            self._validate_key(k)
        self._ensure_writable()
        staged = StagedFiles()
        prefix = self.name_prefix
        try:
            for k, v in zip(keys, values):
                tmp, dest, d = self._write_temp(prefix + k[1:], v, sync=False, staged=True)
                self._staged.add(tmp)
                staged.files.append((tmp, dest))
                staged.dirs.add(d)
        except BaseException:
            self._discard(staged.files)
            raise
        return staged

    def commit_staged(self, batches: list[StagedFiles]) -> None:
        """Put staged files in place, in order, durably when ``sync``: every temp file
        fsynced, then renamed over its record's name, then each directory holding one (and
        the root, after a new shard directory) fsynced. A record's name never holds a
        partial value, and when this returns every record of `batches` is on disk."""
        files = [f for b in batches for f in b.files]
        pool = self._sync_pool()
        if self.sync_writes:
            _sync_all([tmp for tmp, _ in files], os.O_RDONLY, pool)
        dirs: set[bytes] = set()
        for b in batches:
            dirs |= b.dirs
        for tmp, dest in files:
            self._rename_in(tmp, dest)
            self._staged.discard(tmp)
        if self.sync_writes:
            if self._root_dirty:
                self._root_dirty = False  # cleared before the fsync: a later mkdir sets it
                dirs.add(self._root)
            _sync_all(sorted(dirs), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), pool)

    def _sync_pool(self) -> Executor | None:
        """The threads that fsync staged batches (made once, shut down by close)."""
        if self._syncers is None and self.sync_writes:
            from concurrent.futures import ThreadPoolExecutor

            self._syncers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="dsbackup-fsync")
        return self._syncers

    def _thread_temp_dir(self) -> bytes:
        """This thread's directory in ``.temp/`` for staged temp files: creating a file holds
        its directory's lock while the file system picks an inode (on ext4 without a journal,
        past every inode freed in the last minute), so threads creating in one directory took
        turns; ``close`` removes these directories."""
        with self._lock:
            d = b"%s/%d" % (self._temp, len(self._thread_temps))
            self._thread_temps.append(d)
        os.makedirs(d, 0o755, exist_ok=True)
        return d

    def discard_staged(self) -> None:
        """Remove every staged temp file not committed (a restore that stops)."""
        self._discard([(tmp, b"") for tmp in list(self._staged)])

    def _discard(self, files: list[tuple[bytes, bytes]]) -> None:
        for tmp, _ in files:
            _unlink_quiet(tmp)
            self._staged.discard(tmp)

    # -- scans ---------------------------------------------------------------------------
    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Read files in global key order. A file deleted during the scan is skipped.

        Files are opened ``read_ahead`` ahead of the one being read and announced with
        ``posix_fadvise(WILLNEED)``, so the kernel fetches them concurrently (I/O depth
        without threads); at most ``read_ahead`` descriptors are open at once.
        """
        # (no tune_allocator() here: a library caller's process keeps its malloc settings;
        # the CLI and the scan workers tune their own processes, docs/API.md "Memory")
        self._check_open()
        names = (n for group in self._lister.sorted_names(start, end) for n in group)
        cut = len(self.name_prefix)
        if cut:
            items = ((b"/" + n[cut:], v) for n, v in self._read_ahead(names))
        else:
            items = ((b"/" + n, v) for n, v in self._read_ahead(names))
        yield from batch_items(items, max_records, max_bytes)

    def scan_keys(self, start: bytes = b"", end: bytes | None = None, *,
                  max_records: int = DEFAULT_MAX_RECORDS) -> Iterator[list[bytes]]:
        """The keys in ``[start, end)`` in increasing order, in lists of up to
        ``max_records``, from the listing alone: no file is opened or stat'ed (the parallel
        scan's planner lists once and hands each worker its stripe's keys for
        :meth:`read_keys`)."""
        self._check_open()
        cut = len(self.name_prefix)
        for names in self._lister.sorted_names(start, end):
            for i in range(0, len(names), max_records):
                yield [b"/" + n[cut:] for n in names[i:i + max_records]]

    def set_listing_stop(self, should_stop: Callable[[], bool] | None) -> None:
        """``should_stop`` is asked between shard directories while a scan lists the store;
        True ends the scan with :class:`~dsbackup.errors.Cancelled` (a backup's Ctrl-C need
        not wait for the listing of a large store). None: never."""
        self._lister.should_stop = should_stop

    @property
    def listing_passes(self) -> int:
        """How many times scans have listed the shard directories (one per scan; not
        :meth:`listing`)."""
        return self._lister.passes

    def _read_ahead(self, names: Iterator[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """``(name, value)`` in order; files that vanish or cannot be read are skipped and
        counted in :attr:`skipped`."""
        depth = self.read_ahead
        advise = _advise if depth > 0 else None
        file_of = self._file
        open_read = self._open_read
        skip = self.skipped.add
        window: collections.deque[tuple[bytes, int]] = collections.deque()
        try:
            for n in names:
                try:
                    fd = open_read(file_of(n))
                except OSError as e:
                    skip(file_of(n), e)
                    continue
                window.append((n, fd))
                if advise is not None:
                    advise(fd)
                if len(window) > depth:
                    n0, fd0 = window.popleft()
                    try:
                        value = _read_fd(fd0)
                    except OSError as e:
                        skip(file_of(n0), e)
                        continue
                    yield n0, value
            while window:
                n0, fd0 = window.popleft()
                try:
                    value = _read_fd(fd0)
                except OSError as e:
                    skip(file_of(n0), e)
                    continue
                yield n0, value
        finally:
            for _, fd in window:
                os.close(fd)

    def scan_key_sizes(self, start: bytes = b"", end: bytes | None = None, *,
                       max_records: int = DEFAULT_MAX_RECORDS
                       ) -> Iterator[tuple[list[bytes], list[int]]]:
        self._check_open()
        stat = os.stat
        file_of = self._file
        keys: list[bytes] = []
        sizes: list[int] = []
        cut = len(self.name_prefix)
        for names in self._lister.sorted_names(start, end):
            for n in names:
                try:
                    st = stat(file_of(n))
                except FileNotFoundError:
                    continue
                keys.append(b"/" + n[cut:])
                sizes.append(st.st_size)
                if len(keys) >= max_records:
                    yield keys, sizes
                    keys = []
                    sizes = []
        if keys:
            yield keys, sizes

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return unbatch(self.scan_batches(start, end, max_records=256))

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        return unbatch(self.scan_key_sizes(start, end, max_records=1024))

    def approx_count(self) -> int:
        """Number of ``.data`` files (one listing, no sort)."""
        total = 0
        dirs = self._lister.shard_dirs()
        for s in dirs:
            try:
                total += sum(1 for n in os.listdir(b"%s/%s" % (self._root, s))
                             if n.endswith(EXTENSION))
            except FileNotFoundError:
                pass
        self._counted = (total, dirs)  # for the approx_size call that follows (the engine's)
        return total

    def approx_size(self) -> int | None:
        """The tracked usage, else ``diskUsage.cache`` when present (counts directories
        too), else the mean size of a sample of block files (flatfs_sample.py: a few hundred
        files ``lstat``-ed, chosen deterministically) times the file count (the preceding
        :meth:`approx_count`'s, else counted now); None for a store with no file to sample."""
        if self._du is not None:
            return self._du
        cached = read_disk_usage(str(self.path))
        if cached:
            return cached[0]
        counted, self._counted = self._counted, None
        count, dirs = counted if counted is not None else (self.approx_count(), None)
        self._counted = None
        if not count:
            return 0
        mean = sample_mean_size(self._lister, dirs)
        return None if mean is None else round(mean * count)

    def _extreme(self, pick: str, lo: bytes = b"") -> bytes | None:
        best: bytes | None = None
        for s in self._lister.shard_dirs():
            names = self._lister.names_in(s, lo, None)
            if not names:
                continue
            cand = min(names) if pick == "min" else max(names)
            if best is None or (cand < best if pick == "min" else cand > best):
                best = cand
        return None if best is None else b"/" + best[len(self.name_prefix):]

    def first_key(self) -> bytes | None:
        return self._extreme("min")

    def last_key(self) -> bytes | None:
        return self._extreme("max")

    def seek_key(self, key: bytes) -> bytes | None:
        rng = self._lister.name_range(key, None)
        return None if rng is None else self._extreme("min", rng[0])

    def is_empty(self) -> bool:
        return all(not self._lister.names_in(s, b"", None) for s in self._lister.shard_dirs())

    def split_points(self, n: int) -> list[bytes]:
        """Up to ``n - 1`` keys cutting the store into ``n`` near-equal ranges (planning)."""
        names: list[bytes] = []
        for s in self._lister.shard_dirs():
            names += self._lister.names_in(s, b"", None)
        names.sort()
        if n <= 1 or not names:
            return []
        cut = len(self.name_prefix)
        return sorted({b"/" + names[len(names) * i // n][cut:] for i in range(1, n)})

    # -- capabilities --------------------------------------------------------------------
    def audit_files(self) -> FileAudit:
        """Files under the root that a scan does not read (see flatfs_audit.py): one native
        listing (flatfs_fastlist.py); only shard directories holding a misfit are looked at
        name by name."""
        return self.listing(keys=False).audit

    def listing(self, threads: int | None = None, *, keys: bool = True,
                bounded: bool = False) -> FlatListing:
        """Every key in increasing order (``FlatKeys``, native, no Python object per key) and
        the file audit, from one listing of the shard directories in ``threads`` native
        threads (default: the CPU count). ``bounded``: not over ``max_names`` keys; a
        larger store gives ``over`` (list it with :meth:`key_buckets` instead)."""
        self._check_open()
        return list_flatfs(self._root, self.shard, name_prefix=self.name_prefix,
                           go_layout=self.go_layout, threads=threads or os.cpu_count() or 1,
                           keys=keys, max_keys=self.max_names if bounded and keys else 0)

    def key_buckets(self, start: bytes = b"",
                    should_stop: Callable[[], bool] | None = None) -> KeyBuckets:
        """The keys from ``start`` on, a sorted bucket at a time, and the file audit, from
        one listing that holds at most about ``max_names`` names (flatfs_keybuckets.py);
        open: the caller closes it (its spill directory goes)."""
        self._check_open()
        return KeyBuckets(self._lister, go_layout=self.go_layout, start=start,
                          should_stop=should_stop).open()

    def read_keys(self, keys: list[bytes], *, max_records: int = DEFAULT_MAX_RECORDS,
                  max_bytes: int = DEFAULT_MAX_BYTES
                  ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The values of ``keys`` (flatfs keys in increasing order, e.g. from
        :meth:`listing`) in ``(keys, values)`` batches, read ahead as :meth:`scan_batches`
        reads; a file that vanished or cannot be read is skipped and counted in
        :attr:`skipped`."""
        self._check_open()
        prefix, cut = self.name_prefix, len(self.name_prefix)
        names = (prefix + k[1:] for k in keys)
        if cut:
            items = ((b"/" + n[cut:], v) for n, v in self._read_ahead(names))
        else:
            items = ((b"/" + n, v) for n, v in self._read_ahead(names))
        yield from batch_items(items, max_records, max_bytes)

    def check(self) -> None:
        """Every ``.data`` file has a valid name and lives in the shard its name maps to."""
        problems = []
        for s in self._lister.shard_dirs():
            for n in os.listdir(b"%s/%s" % (self._root, s)):
                if not n.endswith(EXTENSION):
                    continue
                name = n[:-_EXT_LEN]
                if not is_valid_name(name):
                    problems.append(f"{os.fsdecode(s)}/{os.fsdecode(n)}: invalid flatfs name")
                elif self._dir_of(name) != s:
                    problems.append(f"{os.fsdecode(s)}/{os.fsdecode(n)}: belongs in shard "
                                    f"{os.fsdecode(self._dir_of(name))}")
                if len(problems) >= 20:
                    break
        if problems:
            raise DatastoreError(f"{self.path}: flatfs check failed: " + "; ".join(problems))

    def scrub(self) -> None:
        """:meth:`check`, then read every file once."""
        self.check()
        last = b""
        try:
            for keys, _ in self.scan_batches(max_records=1024):
                last = keys[-1]
        except OSError as e:
            raise DatastoreError(f"{self.path}: flatfs scrub failed after key {last!r}: {e}") \
                from e

    def sync(self, prefix: object = "/") -> None:
        self._check_open()
        if not self.readonly and self.go_layout and self._du_dirty:
            self._write_disk_usage()

    def close(self) -> None:
        if self._closed:
            return
        if self._syncers is not None:
            self._syncers.shutdown()
            self._syncers = None
        for d in self._thread_temps:  # empty unless a commit failed (go-ds-flatfs's open
            shutil.rmtree(d, ignore_errors=True)  # and ours empty .temp/ anyway)
        self._thread_temps.clear()
        try:
            if not self.readonly and self.go_layout and self._du_dirty:
                self._write_disk_usage()
        finally:
            self._closed = True


def _file_mode() -> int:
    """0666 less the process umask (read once per open, without changing it)."""
    return 0o666 & ~process_umask()


def _advise(fd: int) -> None:
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


def _read_fd(fd: int) -> bytes:
    """Read a whole file and close the descriptor."""
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        if len(data) < size:
            parts = [data]
            while True:
                more = os.read(fd, max(size - len(data), 1 << 16))
                if not more:
                    break
                parts.append(more)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


# a batch's files (and directories) are fsynced by up to this many threads at once: each
# fsync waits for the disk, and several keep its queue full (one after another, a restore of
# many files waits for each in turn)
SYNC_THREADS = 8


def _sync_all(paths: list[bytes], flags: int, pool: Executor | None = None) -> None:
    """fsync every path (opened with `flags`), SYNC_THREADS at a time: in threads of its own,
    the first error raised once all have ended; in `pool` when given, the first error raised
    when met (the paths not yet started are left)."""
    def one(path: bytes) -> None:
        fd = os.open(path, flags | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    if len(paths) <= 1:
        for p in paths:
            one(p)
        return
    if pool is not None:
        for _ in pool.map(one, paths):
            pass
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(SYNC_THREADS, len(paths)),
                            thread_name_prefix="dsbackup-fsync") as pool:
        for _ in pool.map(one, paths):
            pass


def _unlink_quiet(path: bytes) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _checked_max_names(value: object) -> int:
    """``max_names`` as a positive int (a URI gives a string); DatastoreError otherwise (0
    would make every bucket of a spilled listing "over max_names", cut again forever)."""
    try:
        n = int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() \
            else value
    except ValueError:
        n = None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_MAX_NAMES:
        raise DatastoreError(f"flatfs max_names must be an integer 1-{MAX_MAX_NAMES}, got "
                             f"{value!r}")
    return n


def open_flatfs(path: str, *, readonly: bool = False, shard: str | ShardFunc | None = None,
                sync: bool | str = True, max_names: int | str = DEFAULT_MAX_NAMES,
                read_ahead: int | str = DEFAULT_READ_AHEAD, metadata: bool | str = True,
                spill_dir: str | None = None) -> FlatfsDatastore:
    """``metadata=0``: a new directory gets no ``SHARDING`` (nor any other metadata file);
    ``spill_dir``: where a listing over ``max_names`` names sorts them (default ``$TMPDIR``)."""
    from dsbackup.datastores.registry import _bool_param, _int_param

    return FlatfsDatastore(path, readonly=readonly, shard=shard, sync=_bool_param(sync, "sync"),
                           max_names=_checked_max_names(max_names),
                           read_ahead=_int_param(read_ahead, "read_ahead", 0, MAX_READ_AHEAD), metadata=_bool_param(metadata, "metadata"),
                           spill_dir=spill_dir or None)

