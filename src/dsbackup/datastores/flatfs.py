"""flatfs datastore, byte-compatible with go-ds-flatfs (Kubo's ``blocks/`` directory).

Each value is a file ``<root>/<shard>/<NAME>.data`` for key ``/NAME``. Writes go to a temp
file in ``.temp/`` that is renamed into place, so readers never see a partial value. A
directory without a ``SHARDING`` file (Helia's blockstore-fs writes none) opens when the
shard function is given (``shard=`` argument or ``flatfs:PATH?shard=next-to-last/2``).

Read-only opening changes nothing on disk: no ``.temp`` clean-up (go-ds-flatfs's own open
deletes it), no ``diskUsage.cache`` write, no directory creation; files are read with
``O_NOATIME`` where the kernel allows it.

Scans return keys in global sorted order. Names are listed shard by shard and sorted in
memory; with ``prefix/N`` sharding shards are key ranges, so only one shard's names are held
at a time; otherwise every name in the scanned range is held (about 100 bytes a name) up to
``max_names`` (default 1,000,000), beyond which the range is cut into windows at sampled
split keys and the shards are listed once per window.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from dsbackup.datastores.base import DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS, BaseDatastore
from dsbackup.datastores.flatfs_layout import (
    ACCURACY_EXACT,
    DEFAULT_SHARD,
    DISK_USAGE_FILE,
    EXTENSION,
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
from dsbackup.errors import DatastoreError, InvalidKey, NotFound

__all__ = ["FlatfsDatastore", "open_flatfs", "DEFAULT_MAX_NAMES"]

DEFAULT_MAX_NAMES = 1_000_000
_EXT_LEN = len(EXTENSION)
_O_NOATIME = getattr(os, "O_NOATIME", 0)


class FlatfsDatastore(BaseDatastore):
    """A go-ds-flatfs directory."""

    scheme = "flatfs"
    parallel_readable = True

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 shard: str | ShardFunc | None = None, sync: bool = True,
                 max_names: int = DEFAULT_MAX_NAMES) -> None:
        self.path = Path(path).absolute()
        self._root = os.fsencode(self.path)
        self.sync_writes = sync
        self.max_names = max_names
        given = ShardFunc.parse(shard) if isinstance(shard, str) else shard
        recorded = read_sharding(str(self.path)) if self.path.is_dir() else None
        if not self.path.is_dir():
            if readonly:
                raise DatastoreError(f"{self.path}: flatfs directory does not exist")
            self.path.mkdir(mode=0o755, parents=True)
        self.go_layout = recorded is not None
        if recorded is not None:
            if given is not None and str(given) != str(recorded):
                raise DatastoreError(
                    f"{self.path}: specified shard function {given} does not match the "
                    f"directory's {SHARDING_FILE} ({recorded})")
            self.shard = recorded
        elif not readonly and _is_empty_dir(self.path):
            self.shard = given or ShardFunc.parse(DEFAULT_SHARD)
            write_sharding(str(self.path), self.shard)
            self.go_layout = True
        elif given is not None:
            self.shard = given
        else:
            raise DatastoreError(
                f"{self.path}: no {SHARDING_FILE} file and the directory is not empty; give "
                "the shard function (e.g. flatfs:PATH?shard=next-to-last/2, which is what "
                "Helia's blockstore-fs uses)")
        uri = f"flatfs:{self.path}"
        if not self.go_layout:
            uri += f"?shard={self.shard.kind}/{self.shard.param}"
        super().__init__(uri, readonly=readonly)
        self._dir_of = self.shard.dir_of
        self._noatime = _O_NOATIME
        self._lock = threading.Lock()
        self._du: int | None = None
        self._du_accuracy = ACCURACY_EXACT
        self._du_dirty = False
        self._temp = os.path.join(self._root, TEMP_DIR.encode())
        if not readonly and self.go_layout:
            self._init_writable()

    # -- writable set-up, disk usage -----------------------------------------------------
    def _init_writable(self) -> None:
        import shutil

        shutil.rmtree(self._temp, ignore_errors=True)  # as go-ds-flatfs's Open does
        os.mkdir(self._temp, 0o755)
        cached = read_disk_usage(str(self.path))
        if cached is not None:
            self._du, self._du_accuracy = cached
        else:
            self._du = walk_disk_usage(str(self.path))
            self._du_accuracy = ACCURACY_EXACT
            self._write_disk_usage()

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

    def _open_read(self, path: bytes) -> int:
        if self._noatime:
            try:
                return os.open(path, os.O_RDONLY | self._noatime)
            except PermissionError:
                self._noatime = 0  # not the file's owner: plain reads from now on
        return os.open(path, os.O_RDONLY)

    def _read(self, path: bytes) -> bytes:
        fd = self._open_read(path)
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

    # -- primitives ----------------------------------------------------------------------
    def _get(self, key: bytes) -> bytes:
        if not is_valid_key(key):
            raise NotFound(f"key {key!r} not found in {self.uri} (not a flatfs key)")
        try:
            return self._read(self._file(key[1:]))
        except FileNotFoundError:
            raise NotFound(f"key {key!r} not found in {self.uri}") from None

    def _get_size(self, key: bytes) -> int:
        if not is_valid_key(key):
            raise NotFound(f"key {key!r} not found in {self.uri} (not a flatfs key)")
        try:
            return os.stat(self._file(key[1:])).st_size
        except FileNotFoundError:
            raise NotFound(f"key {key!r} not found in {self.uri}") from None

    def _make_shard_dir(self, shard: bytes) -> bytes:
        d = b"%s/%s" % (self._root, shard)
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            return d
        self._add_usage(os.stat(d).st_size)
        if self.sync_writes:
            _fsync_dir(self._root)
        return d

    def _temp_file(self, shard_dir: bytes) -> tuple[int, bytes]:
        where = self._temp if self.go_layout else shard_dir
        prefix = b"temp-" if self.go_layout else b".temp-"
        return tempfile.mkstemp(prefix=prefix, dir=where)

    def _write_temp(self, name: bytes, value: bytes) -> tuple[bytes, bytes, bytes]:
        d = self._make_shard_dir(self._dir_of(name))
        fd, tmp = self._temp_file(d)
        try:
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view):]
            if self.sync_writes:
                os.fsync(fd)
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
        tmp, dest, d = self._write_temp(key[1:], value)
        self._rename_in(tmp, dest)
        if self.sync_writes:
            _fsync_dir(d)

    def _delete(self, key: bytes) -> None:
        if not is_valid_key(key):
            return
        path = self._file(key[1:])
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
        self._check_writable()
        if len(keys) != len(values):
            raise ValueError("put_many: keys and values differ in length")
        for k in keys:
            self._validate_key(k)
        self._put_pairs(list(zip(keys, values)))

    def _put_pairs(self, pairs: list[tuple[bytes, bytes]]) -> None:
        staged: list[tuple[bytes, bytes]] = []
        dirs: set[bytes] = set()
        done = 0
        try:
            for k, v in pairs:
                tmp, dest, d = self._write_temp(k[1:], v)
                staged.append((tmp, dest))
                dirs.add(d)
            for tmp, dest in staged:
                self._rename_in(tmp, dest)
                done += 1
        finally:
            for tmp, _ in staged[done:]:
                _unlink_quiet(tmp)
        if self.sync_writes:
            for d in dirs:
                _fsync_dir(d)

    # -- listing -------------------------------------------------------------------------
    def _shard_dirs(self) -> list[bytes]:
        out = []
        with os.scandir(self._root) as it:
            for e in it:
                if e.name[:1] != b"." and e.is_dir(follow_symlinks=False):
                    out.append(e.name)
        out.sort()
        return out

    def _names_in(self, shard: bytes, lo: bytes, hi: bytes | None) -> list[bytes]:
        """Valid names (no extension) in one shard dir that map to it, in ``[lo, hi)``."""
        try:
            entries = os.listdir(b"%s/%s" % (self._root, shard))
        except (FileNotFoundError, NotADirectoryError):
            return []
        dir_of = self._dir_of
        names = [n[:-_EXT_LEN] for n in entries if n.endswith(EXTENSION)]
        if lo:
            names = [n for n in names if n >= lo]
        if hi is not None:
            names = [n for n in names if n < hi]
        return [n for n in names if is_valid_name(n) and dir_of(n) == shard]

    @staticmethod
    def _name_range(start: bytes, end: bytes | None) -> tuple[bytes, bytes | None] | None:
        """Map a key range to a name range (keys are ``b"/" + name``); None when empty."""
        if start <= b"/":
            lo = b""
        elif start[:1] == b"/":
            lo = start[1:]
        else:
            return None
        if end is None:
            hi = None
        elif end <= b"/":
            return None
        elif end[:1] == b"/":
            hi = end[1:]
        else:
            hi = None
        if hi is not None and lo >= hi:
            return None
        return lo, hi

    def _sorted_names(self, start: bytes, end: bytes | None) -> Iterator[list[bytes]]:
        """Sorted lists of names in the key range, in global order, memory-bounded."""
        rng = self._name_range(start, end)
        if rng is None:
            return
        lo, hi = rng
        shards = self._shard_dirs()
        if self.shard.ordered_by_shard:
            for s in shards:
                names = self._names_in(s, lo, hi)
                names.sort()
                if names:
                    yield names
            return
        acc: list[bytes] = []
        for i, s in enumerate(shards):
            acc += self._names_in(s, lo, hi)
            if len(acc) > self.max_names:
                yield from self._windowed(shards, lo, hi, acc, (i + 1) / len(shards))
                return
        acc.sort()
        if acc:
            yield acc

    def _windowed(self, shards: list[bytes], lo: bytes, hi: bytes | None,
                  sample: list[bytes], fraction: float) -> Iterator[list[bytes]]:
        sample.sort()
        windows = int(len(sample) / fraction / self.max_names) + 1
        step = max(len(sample) // windows, 1)
        cuts = sorted({sample[j] for j in range(step, len(sample), step)})
        del sample[:]
        bounds: list[bytes | None] = [*cuts, hi]
        w_lo = lo
        for w_hi in bounds:
            names: list[bytes] = []
            for s in shards:
                names += self._names_in(s, w_lo, w_hi)
            names.sort()
            if names:
                yield names
            if w_hi is None:
                return
            w_lo = w_hi

    # -- scans ---------------------------------------------------------------------------
    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Read files in global key order. A file deleted during the scan is skipped."""
        self._check_open()
        read = self._read
        file_of = self._file
        keys: list[bytes] = []
        vals: list[bytes] = []
        size = 0
        for names in self._sorted_names(start, end):
            for n in names:
                try:
                    v = read(file_of(n))
                except FileNotFoundError:
                    continue
                keys.append(b"/" + n)
                vals.append(v)
                size += len(v)
                if len(keys) >= max_records or size >= max_bytes:
                    yield keys, vals
                    keys = []
                    vals = []
                    size = 0
        if keys:
            yield keys, vals

    def scan_key_sizes(self, start: bytes = b"", end: bytes | None = None, *,
                       max_records: int = DEFAULT_MAX_RECORDS
                       ) -> Iterator[tuple[list[bytes], list[int]]]:
        self._check_open()
        stat = os.stat
        file_of = self._file
        keys: list[bytes] = []
        sizes: list[int] = []
        for names in self._sorted_names(start, end):
            for n in names:
                try:
                    st = stat(file_of(n))
                except FileNotFoundError:
                    continue
                keys.append(b"/" + n)
                sizes.append(st.st_size)
                if len(keys) >= max_records:
                    yield keys, sizes
                    keys = []
                    sizes = []
        if keys:
            yield keys, sizes

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        for keys, vals in self.scan_batches(start, end, max_records=256):
            yield from zip(keys, vals)

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        for keys, sizes in self.scan_key_sizes(start, end, max_records=1024):
            yield from zip(keys, sizes)

    def approx_count(self) -> int:
        """Number of ``.data`` files (one listing, no sort)."""
        total = 0
        for s in self._shard_dirs():
            try:
                total += sum(1 for n in os.listdir(b"%s/%s" % (self._root, s))
                             if n.endswith(EXTENSION))
            except FileNotFoundError:
                pass
        return total

    def approx_size(self) -> int | None:
        """``diskUsage.cache`` when present (counts directories too), else the tracked
        usage, else None."""
        if self._du is not None:
            return self._du
        cached = read_disk_usage(str(self.path))
        return cached[0] if cached else None

    def _extreme(self, pick: str, lo: bytes = b"") -> bytes | None:
        best: bytes | None = None
        for s in self._shard_dirs():
            names = self._names_in(s, lo, None)
            if not names:
                continue
            cand = min(names) if pick == "min" else max(names)
            if best is None or (cand < best if pick == "min" else cand > best):
                best = cand
        return None if best is None else b"/" + best

    def first_key(self) -> bytes | None:
        return self._extreme("min")

    def last_key(self) -> bytes | None:
        return self._extreme("max")

    def seek_key(self, key: bytes) -> bytes | None:
        rng = self._name_range(key, None)
        return None if rng is None else self._extreme("min", rng[0])

    def is_empty(self) -> bool:
        return all(not self._names_in(s, b"", None) for s in self._shard_dirs())

    def split_points(self, n: int) -> list[bytes]:
        """Up to ``n - 1`` keys cutting the store into ``n`` near-equal ranges (planning)."""
        names: list[bytes] = []
        for s in self._shard_dirs():
            names += self._names_in(s, b"", None)
        names.sort()
        if n <= 1 or not names:
            return []
        return sorted({b"/" + names[len(names) * i // n] for i in range(1, n)})

    # -- capabilities --------------------------------------------------------------------
    def check(self) -> None:
        """Every ``.data`` file has a valid name and lives in the shard its name maps to."""
        problems = []
        for s in self._shard_dirs():
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
        try:
            if not self.readonly and self.go_layout and self._du_dirty:
                self._write_disk_usage()
        finally:
            self._closed = True


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def _fsync_dir(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: bytes) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_flatfs(path: str, *, readonly: bool = False, shard: str | ShardFunc | None = None,
                sync: bool | str = True, max_names: int | str = DEFAULT_MAX_NAMES
                ) -> FlatfsDatastore:
    from dsbackup.datastores.registry import _bool_param

    return FlatfsDatastore(path, readonly=readonly, shard=shard, sync=_bool_param(sync),
                           max_names=int(max_names))

