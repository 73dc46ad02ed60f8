"""Persistent scheduler state (one JSON file, replaced atomically) and the state-dir lock.

Layout of ``<state_path>/``: ``state.json`` (per schedule: last run, next run, last result,
statistics, the archives it made) and ``daemon.lock`` (POSIX lock + the holder's PID).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.errors import LockedError, SchedulerError
from dsbackup.scheduler.config import RunRecord, ScheduleStatistics

log = logging.getLogger(__name__)

STATE_VERSION = 1
_held_locks: set[str] = set()  # POSIX locks do not conflict inside one process
_held_guard = threading.Lock()


@dataclass
class ArchiveEntry:
    """An archive made by a schedule, as remembered in the state."""

    path: str
    created: datetime
    fingerprint: str | None = None
    parent: str | None = None  # fingerprint of the parent archive (incremental) or None
    verified: bool = False
    size: int | None = None
    keys: int | None = None


@dataclass
class ScheduleState:
    last_run: datetime | None = None
    next_run: datetime | None = None
    last_result: RunRecord | None = None
    statistics: ScheduleStatistics | None = None
    archives: list[ArchiveEntry] | None = None
    running: dict[str, str] | None = None  # {"started", "slot", "trigger"} while a run is going
    timing: str | None = None  # "<cron expression> <time zone>" that next_run was computed from


def _enc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _enc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_enc(v) for v in value]
    return value


def _record(obj: Any) -> dict[str, Any] | None:
    """A flat dataclass as a JSON-able dict (cheaper than ``dataclasses.asdict``)."""
    if obj is None:
        return None
    return {f.name: _enc(getattr(obj, f.name)) for f in fields(obj)}


def _dec(cls: type, data: dict[str, Any] | None) -> Any:
    if data is None:
        return None
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        if isinstance(v, str) and "datetime" in str(f.type):
            v = datetime.fromisoformat(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def resolve_relative_paths(entries: list[ArchiveEntry], backup_dir: Any) -> int:
    """Make the archive paths of `entries` that an older version recorded relative to the
    working directory of its run (``../conf/backups/ipfs_...tar.gz``, before config paths
    were the file's directory's) absolute, in place, as they were meant: the archive of that
    name in the schedule's backup directory `backup_dir` (where every run writes), unless it
    is not there and the path as recorded finds it from this working directory. Returns the
    number changed. Absolute paths, and ``s3://`` ones, are left as they are; so are all of
    them when `backup_dir` is not a local directory."""
    changed = 0
    for e in entries:
        if not isinstance(e.path, str) or not e.path or e.path.startswith("s3://") \
                or os.path.isabs(e.path):
            continue
        meant = Path(os.path.abspath(Path(backup_dir) / Path(e.path).name)) \
            if isinstance(backup_dir, Path) else None
        here = Path(os.path.abspath(e.path))
        if meant is None and not here.exists():
            continue
        e.path = str(here if meant is None or (not meant.exists() and here.exists())
                     else meant)
        changed += 1
    return changed


def encode_state(schedules: dict[str, ScheduleState]) -> dict[str, Any]:
    out = {}
    for sid, st in schedules.items():
        out[sid] = {
            "last_run": _enc(st.last_run), "next_run": _enc(st.next_run),
            "last_result": _record(st.last_result),
            "statistics": _record(st.statistics),
            "archives": [_record(a) for a in st.archives or []],
            "running": st.running,
            "timing": st.timing,
        }
    return {"version": STATE_VERSION, "schedules": out}


def decode_state(doc: dict[str, Any]) -> dict[str, ScheduleState]:
    if doc.get("version") != STATE_VERSION:
        raise SchedulerError(f"unsupported scheduler state version {doc.get('version')!r}")
    out = {}
    for sid, d in doc.get("schedules", {}).items():
        out[sid] = ScheduleState(
            last_run=datetime.fromisoformat(d["last_run"]) if d.get("last_run") else None,
            next_run=datetime.fromisoformat(d["next_run"]) if d.get("next_run") else None,
            last_result=_dec(RunRecord, d.get("last_result")),
            statistics=_dec(ScheduleStatistics, d.get("statistics")),
            archives=[_dec(ArchiveEntry, a) for a in d.get("archives", [])],
            running=d.get("running"),
            timing=d.get("timing"),
        )
    return out


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix.
    ``mode`` is filtered by the process umask, as open(2) does."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateStore:
    """Reads and writes ``state.json`` in a state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "state.json"
        self._lock = threading.Lock()

    def load(self) -> dict[str, ScheduleState]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return decode_state(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # (JSON of another shape)
            raise SchedulerError(f"{self.path}: unreadable scheduler state ({exc})") from exc

    def remove_leftovers(self) -> list[Path]:
        """Remove the temp files of saves killed midway (``.state.json.PID.TID.tmp``); call
        it holding the daemon lock, when no other process saves here."""
        removed = []
        for tmp in self.directory.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
        return removed

    def save(self, schedules: dict[str, ScheduleState]) -> None:
        """Raises OSError naming ``state.json`` (a full disk's write error names none)."""
        data = json.dumps(encode_state(schedules), separators=(",", ":")).encode()
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, data)
            except OSError as exc:  # (not the temp file's name, which changes each time)
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


class DaemonLock:
    """Only one scheduler serves a state directory.

    The lock is a POSIX record lock (``fcntl.lockf``) on ``daemon.lock``, which the kernel drops
    when the holder dies, so a lock file left by a killed daemon (its PID dead) is taken over;
    the PID written in the file names the holder in the error message.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "daemon.lock"
        self._fd: int | None = None
        self.stale_pid: int | None = None

    @staticmethod
    def _read_pid(fd: int) -> int | None:
        # read through the fd we hold: opening and closing the file again would drop our
        # POSIX lock (locks belong to the process and go with any close of the file)
        try:
            return int(os.pread(fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        with _held_guard:
            if key in _held_locks:
                raise LockedError(f"{self.path.parent}: state directory is in use in this process")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = self._read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                holder = f"pid {pid}" if pid else "another process"
                raise LockedError(f"{self.path.parent}: state directory is locked by {holder} "
                                  f"(another scheduler serves it)") from None
            old = self._read_pid(fd)
            if old is not None and old != os.getpid() and not pid_alive(old):
                self.stale_pid = old
                log.warning("%s: stale lock of dead pid %d taken over", self.path, old)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                os.fsync(fd)
            except OSError as exc:  # a full disk: the lock file named, the lock let go
                os.close(fd)
                if is_no_space(exc):
                    raise SchedulerError(no_space_message(self.path)) from None
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None
            self._fd = fd
            _held_locks.add(key)

    def release(self) -> None:
        if self._fd is None:
            return
        key = str(self.path.resolve())
        with _held_guard:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing drops the POSIX lock
                self._fd = None
                _held_locks.discard(key)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
