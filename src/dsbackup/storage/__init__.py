"""Where archives live: local files, S3-compatible object storage, standard output/input.

The archive reader and writer go through :func:`open_source` and :func:`open_sink` and do not
know where the bytes live (docs/STORAGE.md). Locations: see :mod:`dsbackup.storage.location`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbackup._plain import Frozen
from dsbackup.errors import ConfigError, DsBackupError
from dsbackup.storage.base import Sink, Source
from dsbackup.storage.location import (
    STREAM,
    S3Location,
    as_location,
    display,
    identity,
    is_remote,
    is_s3,
    is_stream,
    relative_hint,
)

if TYPE_CHECKING:
    from datetime import datetime

# S3's settings (configparser, ipaddress, the AWS files) load when first asked for: a local
# archive's verify or restore never needs them (start-up, docs/PERFORMANCE.md)
_S3CONFIG_NAMES = ("check_endpoint", "configure", "parse_stale_hours", "scrub")


def __getattr__(name: str) -> Any:
    if name in _S3CONFIG_NAMES:
        from dsbackup.storage import s3config

        value = getattr(s3config, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STREAM", "S3Location", "Sink", "Source", "abort_stale_uploads", "as_location", "check_endpoint", "configure",
           "delete", "display", "exists", "identity", "is_file", "is_remote", "is_s3",
           "is_stream", "list_archives", "live_writes", "open_sink", "open_source", "parse_stale_hours",
           "relative_hint", "scrub", "set_aside"]

AnyLocation = str | os.PathLike[str] | S3Location


def open_sink(location: AnyLocation, *, overwrite: bool = False) -> Sink:
    """A new archive at `location` (nothing appears there before ``commit``)."""
    loc = as_location(location)
    if isinstance(loc, S3Location):
        from dsbackup.storage.s3 import S3Sink

        return S3Sink(loc, overwrite=overwrite)
    if loc == STREAM:
        from dsbackup.storage.stream import StdoutSink

        return StdoutSink()
    from dsbackup.storage.local import LocalSink

    return LocalSink(Path(loc), overwrite=overwrite)


def open_source(location: AnyLocation) -> Source:
    """An existing archive for random access (ArchiveUnavailable when there is none)."""
    loc = as_location(location)
    if isinstance(loc, S3Location):
        from dsbackup.storage.s3 import S3Source

        return S3Source(loc)
    if loc == STREAM:
        from dsbackup.storage.stream import spooled_stdin

        return spooled_stdin()
    from dsbackup.storage.local import LocalSource

    return LocalSource(Path(loc))


def exists(location: AnyLocation) -> bool:
    loc = as_location(location)
    if isinstance(loc, S3Location):
        from dsbackup.storage.s3 import head

        return head(loc) is not None
    if loc == STREAM:
        return False
    return os.path.lexists(loc)


def is_file(location: AnyLocation) -> bool:
    loc = as_location(location)
    if isinstance(loc, S3Location):
        return not loc.is_prefix and exists(loc)
    return loc != STREAM and Path(loc).is_file()


def list_archives(directory: AnyLocation) -> list[Path] | list[S3Location]:
    """Candidate archives in a directory or under an S3 prefix (sorted, hidden names left
    out: temp files are hidden)."""
    loc = as_location(directory)
    if isinstance(loc, S3Location):
        from dsbackup.storage.s3 import list_archives as s3_list

        return s3_list(S3Location(loc.bucket, loc.prefix))
    if loc == STREAM:
        raise ConfigError("'-' (a stream) is not a directory of archives")
    from dsbackup.storage.local import list_archives as local_list

    return local_list(Path(loc))


# the S3 server's clock against the backup hosts' (live_writes); datetime is imported there:
# the reading commands do without it (start-up)
_S3_CLOCK_MARGIN_S = 3600


class LiveWrite(Frozen):
    """An archive being written now: `location`, where its bytes are so far (a local temp file,
    whose head can be read; the key of an S3 multipart upload, whose parts cannot), `final`,
    the archive's name, `started`, a time no earlier than the run began (its parent was made
    before), and `who`, for messages."""

    __slots__ = ("location", "final", "started", "who")
    location: Path | S3Location
    final: str
    started: datetime
    who: str

    def __init__(self, location: Path | S3Location, final: str, started: datetime,
                 who: str) -> None:
        self._set(location, final, started, who)


def live_writes(directory: AnyLocation) -> list[LiveWrite]:
    """The archives being written in a directory (temp files whose writer is alive) or under
    an S3 prefix (multipart uploads that are not stale, :func:`dsbackup.storage.s3stale.
    live_uploads`): prune keeps their parents. ArchiveError/ConfigError when an S3 listing
    fails. An archive on S3 smaller than one part is not seen: it is held in memory until one
    PUT (docs/CLI.md `prune`)."""
    from datetime import datetime, timedelta, timezone

    loc = as_location(directory)
    if isinstance(loc, S3Location):
        from dsbackup.storage.s3stale import live_uploads

        # its last activity (the newest part, else the initiation: some servers report odd
        # initiation times), later than its start, plus a margin: the server's clock, in whole
        # seconds, against the archives' creation times on the backup hosts' clocks
        margin = timedelta(seconds=_S3_CLOCK_MARGIN_S)
        return [LiveWrite(u.location, u.location.name, u.last_activity + margin,
                          f"multipart upload {u.upload_id[:16]}")
                for u in live_uploads(S3Location(loc.bucket, loc.prefix))]
    if loc == STREAM:
        return []
    from dsbackup.storage.tempfiles import live_temp_files, temp_stem

    out = []
    for pid, tmp in live_temp_files(Path(loc)):
        try:
            when = datetime.fromtimestamp(tmp.stat().st_mtime, timezone.utc)
        except OSError:  # renamed into place meanwhile: a final archive now
            continue
        out.append(LiveWrite(tmp, temp_stem(tmp.name), when, f"PID {pid}"))
    return out


def delete(location: AnyLocation) -> None:
    loc = as_location(location)
    if isinstance(loc, S3Location):
        from dsbackup.storage.s3 import delete as s3_delete

        s3_delete(loc)
        return
    if loc == STREAM:
        raise ConfigError("'-' (a stream) cannot be deleted")
    os.unlink(loc)


def set_aside(location: AnyLocation, suffix: str) -> str:
    """Move an archive away from its name, to the name plus `suffix` (a file: renamed; an
    object: copied, then deleted, :func:`dsbackup.storage.s3.set_aside`), so that retention
    and prune no longer count it; returns what happened ("kept as NAME", or why not), for a
    message. An object whose copy fails stays, as a file whose rename fails does."""
    loc = as_location(location)
    if isinstance(loc, S3Location):
        from dsbackup.storage.s3 import set_aside as s3_set_aside

        try:
            return s3_set_aside(loc, suffix)
        except DsBackupError as exc:
            return f"it could not be deleted from its name ({exc}): it is still there"
    if loc == STREAM:
        raise ConfigError("'-' (a stream) cannot be renamed")
    aside = Path(loc).with_name(Path(loc).name + suffix)
    try:
        os.rename(loc, aside)
    except OSError as exc:
        return f"it could not be renamed to {aside} ({exc.strerror}): it is still at its name"
    return f"kept as {aside}"


def abort_stale_uploads(prefix: S3Location, *, dry_run: bool = False) -> list[Any]:
    """Abort dsbackup's unfinished multipart uploads under `prefix` idle for the configured
    hours (killed backups'; :mod:`dsbackup.storage.s3stale`); each said on stderr."""
    from dsbackup.storage.s3stale import abort_stale

    return abort_stale(prefix, dry_run=dry_run)
