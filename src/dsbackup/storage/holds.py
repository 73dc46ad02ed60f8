"""Holds: a running incremental backup's mark beside each archive of its parent chain, so that
a prune of that directory keeps it, wherever the new archive is written (docs/CLI.md `prune`).

A hold is a hidden file `.<archive name>.hold-<pid>-<random>` in the archive's directory,
holding a line of JSON (what the backup writes), on which the backup holds an exclusive
`flock` from the opening of its parent until it ends; it removes the file then. A killed
backup's hold is not locked any more: it keeps nothing by itself, but it names the archive
its backup was writing, and while that backup's temp file is there for `backup --resume`,
prune keeps its parent chain (rule resumable; dsbackup.scheduler.pruning). The next backup
holding an archive of that directory removes a dead hold whose backup left no temp file
(taking its lock first). A hold is created under a pending name (`<hold name>.new`, which
prune does not read), locked, written, and only then renamed to its name: whoever lists the
directory never sees a running backup's hold unlocked or empty, which a prune would take for
a dead backup's and delete the archive it holds. A dead-hold cleanup may still lock a pending
hold between its creation and its owner's flock (it removes it then, as a killed backup's
leftover): its owner finds its file locked or unlinked and makes another. Local archives
only: an object store has no locks (a parent deleted under an S3 prefix fails the backup at
its check before the rename, nothing stored).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dsbackup.storage.tempfiles import (
    NAME_MAX,
    PID_DIGITS,
    held_by_someone,
    name_stem,
    temp_prefix,
)

log = logging.getLogger(__name__)

# `.STEM.hold-PID-RANDOM.new`: the room left for the stem of the held archive's name
HOLD_STEM_ROOM = NAME_MAX - len(".") - len(".hold-") - PID_DIGITS - len("-") - 12 - len(".new")
_HOLD_NAME = re.compile(r"^\.(?P<name>.+)\.hold-(?P<pid>\d+)-[0-9a-f]{12}$")
# a hold being made (or a killed backup's, from before it was renamed into place)
_PENDING_NAME = re.compile(r"^\.(?P<name>.+)\.hold-(?P<pid>\d+)-[0-9a-f]{12}\.new$")
_READ = 4096  # a hold's JSON is a path and a PID


@dataclass(frozen=True)
class Held:
    """An archive of a directory held by a backup: `archive`, its file name; `child`, the
    absolute path of what that backup writes ("" when the hold cannot be read); `pid`, the
    holder's; `live`, whether it runs (else it was killed)."""

    archive: str
    child: str
    pid: int
    hold: Path
    live: bool = True


class Holds:
    """The holds one backup has taken; :meth:`release` removes them (also on exit)."""

    def __init__(self) -> None:
        self._files: list[tuple[Path, int]] = []

    def __enter__(self) -> Holds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self._files]

    def take(self, archive: Path, child: str) -> None:
        """Hold `archive` (and, when it is a symlink, the file it names) for `child`."""
        targets = [archive]
        real = Path(os.path.realpath(archive))
        try:
            if real.name != archive.name or not os.path.samefile(real.parent, archive.parent):
                targets.append(real)
        except OSError:
            pass
        for a in targets:
            try:
                self._take(a, child)
            except OSError as exc:  # the backup goes on; a prune there could delete it
                level = logging.INFO if exc.errno == errno.EROFS else logging.WARNING
                log.log(level, "%s: cannot hold it against a prune while this backup runs "
                        "(%s)", a, exc.strerror or exc)

    def _take(self, archive: Path, child: str) -> None:
        remove_dead_holds(archive.parent)
        data = json.dumps({"child": child, "pid": os.getpid()}).encode()
        for _ in range(8):
            stem = name_stem(archive.name, HOLD_STEM_ROOM)
            path = archive.with_name(f".{stem}.hold-{os.getpid()}-{os.urandom(6).hex()}")
            pending = path.with_name(path.name + ".new")  # not a hold's name: prune skips it
            fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a dead-hold cleanup has it locked: it removes it
                    os.close(fd)
                    _unlink(pending)
                    continue
                if os.fstat(fd).st_nlink == 0:  # removed as a dead hold before we locked it
                    os.close(fd)
                    continue
                os.write(fd, data)
                # visible only now, locked and naming its backup (the lock stays with the
                # file): a prune listing the directory sees it live, or not at all
                os.rename(pending, path)
            except BaseException:
                os.close(fd)
                _unlink(pending)
                raise
            self._files.append((path, fd))
            return
        raise OSError(errno.EAGAIN, "its hold file kept being removed")

    def release(self) -> None:
        files, self._files = self._files, []
        for path, fd in files:
            _unlink(path)
            os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def hold_chain(archives: Iterable[object], child: object) -> Holds:
    """Holds on every local archive of `archives` (a parent chain) for the backup writing
    `child`; S3 locations are skipped."""
    holds = Holds()
    child = os.path.abspath(child) if isinstance(child, Path) else str(child)
    for a in archives:
        if isinstance(a, Path):
            holds.take(a, child)
    return holds


def holds_in(directory: Path) -> list[Held]:
    """The holds on archives of `directory`: live ones (their lock is held) and dead ones."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out = []
    # the archives whose names were too long for a hold's: their stems in hold names
    stems = {name_stem(n, HOLD_STEM_ROOM): n for n in names
             if len(os.fsencode(n)) > HOLD_STEM_ROOM}
    for name in names:
        m = _HOLD_NAME.match(name)
        if not m:
            continue
        path = directory / name
        archive = stems.get(m.group("name"), m.group("name"))
        out.append(Held(archive, _child_of(path), int(m.group("pid")), path,
                        held_by_someone(path)))
    return out


def _child_of(path: Path) -> str:
    """What the hold's backup writes, from its JSON ("" when it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        child = json.loads(os.read(fd, _READ)).get("child")
    except (OSError, ValueError, AttributeError, RecursionError):
        return ""
    finally:
        os.close(fd)
    return child if isinstance(child, str) else ""


def _left_temp_file(child: str) -> bool:
    """Whether a temp file of the archive `child` is in its directory."""
    if not os.path.isabs(child):  # unreadable, or not a local archive (S3, -)
        return False
    final = Path(child)
    try:
        prefix = temp_prefix(final)
        return any(n.startswith(prefix) for n in os.listdir(final.parent))
    except OSError:
        return False


def remove_dead_holds(directory: Path) -> None:
    """Remove the holds of `directory` whose backup is gone (nobody holds their lock)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = _HOLD_NAME.match(name) or _PENDING_NAME.match(name)
        if not m or int(m.group("pid")) == os.getpid():
            continue
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its backup runs
        else:
            # else resumable: it keeps the chain; a pending hold is a killed backup's (its
            # owner holds its lock until it renames it) and names nothing prune reads
            if name.endswith(".new") or not _left_temp_file(_child_of(path)):
                _unlink(path)  # while holding its lock
        finally:
            os.close(fd)
