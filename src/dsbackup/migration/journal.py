"""The migration journal (append-only, fsynced) and the version stamp.

Journal: ``<state dir>/<plan id>.journal``, one record per line::

    <crc32 of the JSON, 8 hex digits> <JSON object>\\n

Every append is flushed and ``fsync``ed before the run goes on, so the journal never claims
more than is durable. Records (``t`` = type):

- ``begin``: plan id, version, digest, source and target URIs;
- ``backup``: path of the pre-migration archive;
- ``checkpoint``: step index and id, phase, the last key handled (hex) and cumulative counts;
  written only after the store the step writes has been synced;
- ``step_done``: step index, id and its result;
- ``failed`` / ``rolled_back``: what went wrong and what was reverted;
- ``done``: written after the stamp.

Reading tolerates exactly one kind of damage: a last line without its newline, which is an
append that a kill interrupted; it is ignored (and cut off before the next append). Any other
line that does not check (bad CRC, bad JSON, unknown record) is corruption: the run stops
with :class:`JournalCorrupt` and writes no stamp.

Stamp: ``<state dir>/<plan id>.version``, a small JSON document (plan id, version, digest,
completion time, backup path), written to a temporary name, fsynced and renamed into place,
as the very last act of a successful run.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup.errors import JournalCorrupt, MigrationError
from dsbackup.filemodes import private_mode
from dsbackup.storage.tempfiles import fsync_dir

__all__ = ["Journal", "JournalCorrupt", "JournalState", "read_stamp", "write_stamp"]

_TYPES = {"begin", "backup", "checkpoint", "step_done", "failed", "rolled_back", "done"}


@dataclass
class JournalState:
    """What a journal says happened."""

    begin: dict[str, Any] | None = None
    backup_path: str | None = None
    steps_done: dict[int, dict[str, Any]] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None  # latest checkpoint of the unfinished step
    failed: dict[str, Any] | None = None
    done: bool = False
    records: int = 0

    @property
    def started(self) -> bool:
        return self.begin is not None


def _encode(rec: dict[str, Any]) -> bytes:
    body = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


class Journal:
    """One plan's journal file. Open with :meth:`open`; :meth:`state` parses it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> JournalState:
        st = JournalState()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return st
        except OSError as exc:
            raise JournalCorrupt(f"cannot read migration journal {self.path}: {exc}") from None
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends in a newline; else a torn append
        del tail
        for no, line in enumerate(lines, 1):
            rec = self._parse(line, no)
            try:
                self._apply(st, rec, no)
            except (KeyError, TypeError, ValueError):
                raise JournalCorrupt(f"migration journal {self.path}, line {no}: "
                                     f"incomplete {rec['t']!r} record") from None
            st.records += 1
        return st

    def _parse(self, line: bytes, no: int) -> dict[str, Any]:
        where = f"migration journal {self.path}, line {no}"
        if len(line) < 10 or line[8:9] != b" ":
            raise JournalCorrupt(f"{where}: malformed record")
        try:
            crc = int(line[:8], 16)
        except ValueError:
            raise JournalCorrupt(f"{where}: malformed checksum") from None
        body = line[9:]
        if zlib.crc32(body) != crc:
            raise JournalCorrupt(f"{where}: checksum mismatch")
        try:
            rec = json.loads(body)
        except ValueError:
            raise JournalCorrupt(f"{where}: not JSON") from None
        if not isinstance(rec, dict) or rec.get("t") not in _TYPES:
            raise JournalCorrupt(f"{where}: unknown record")
        return rec

    def _apply(self, st: JournalState, rec: dict[str, Any], no: int) -> None:
        t = rec["t"]
        if t != "begin" and st.begin is None:
            raise JournalCorrupt(f"migration journal {self.path}, line {no}: "
                                 f"{t!r} before 'begin'")
        if t == "begin":
            if st.begin is not None:
                raise JournalCorrupt(f"migration journal {self.path}, line {no}: second 'begin'")
            st.begin = rec
        elif t == "backup":
            st.backup_path = rec.get("path")
        elif t == "checkpoint":
            st.checkpoint = rec
        elif t == "step_done":
            st.steps_done[int(rec["step"])] = rec
            st.checkpoint = None
        elif t == "failed":
            st.failed = rec
        elif t == "rolled_back":
            st.failed = None
        elif t == "done":
            st.done = True

    def open(self) -> None:
        """Open for appending; cuts off a torn last line first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, private_mode())
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                data = self.path.read_bytes()
                keep = data.rfind(b"\n") + 1
                os.ftruncate(fd, keep)
                os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd
        if created:
            fsync_dir(self.path.parent, best_effort=True)

    def append(self, rec: dict[str, Any]) -> None:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        data = _encode(rec)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def retire(self, suffix: str) -> Path | None:
        """Move the journal aside (after a rollback) so a later run starts afresh."""
        self.close()
        if not self.path.exists():
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        dest = self.path.with_name(f"{self.path.name}.{suffix}-{stamp}")
        os.replace(self.path, dest)
        fsync_dir(self.path.parent, best_effort=True)
        return dest

    def remove(self) -> bool:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.path.parent, best_effort=True)
        return True


def write_stamp(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")  # per process
    os.fchmod(fd, private_mode())
    try:
        with open(fd, "wb") as f:
            f.write(json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent, best_effort=True)


def read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MigrationError(f"version stamp {path} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise MigrationError(f"version stamp {path} is not a JSON object")
    return doc


def remove_stamp(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent, best_effort=True)
    return True
