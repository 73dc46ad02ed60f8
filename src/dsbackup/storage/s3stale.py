"""Stale multipart uploads of a prefix: found and aborted by the next backup to the prefix and
by ``prune`` of it (docs/STORAGE.md "Stale uploads").

A backup uploads straight to its archive's key (completion is the rename), so a backup killed
with SIGKILL, or one whose abort could not reach the server, leaves an unfinished upload at
that key, whose parts the provider keeps (and bills) until it is aborted. Which uploads are
dsbackup's, and stale:

- **dsbackup's**: the key lies directly under the prefix (no further ``/``) and its name is
  not hidden (no leading dot): the keys ``prune`` and ``--parent-dir`` treat as the prefix's
  archives. Uploads in sub-prefixes and hidden names are never touched.
- **stale**: nothing happened to it for ``stale_hours`` (default 24; ``--s3-stale-hours``,
  ``DSBACKUP_S3_STALE_HOURS``, the scheduler's ``s3_stale_hours``; ``off``): it was initiated
  that long ago *and* its newest part is that old, both measured on the server's clock (the
  Date of the listing's response), so a running backup — which uploads a part every few
  seconds — is left alone however long it has been running, and clock skew does not count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dsbackup.errors import DsBackupError, S3ApiError
from dsbackup.storage.location import S3Location
from dsbackup.storage.s3api import S3Api
from dsbackup.storage.s3config import scrub, settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StaleUpload:
    location: S3Location
    upload_id: str
    initiated: datetime
    last_activity: datetime  # the newest part's time, else the initiation
    idle: timedelta
    parts: int
    size: int
    aborted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"location": str(self.location), "upload_id": self.upload_id,
                "initiated": self.initiated.isoformat(),
                "last_activity": self.last_activity.isoformat(),
                "idle_hours": round(self.idle.total_seconds() / 3600, 3),
                "parts": self.parts, "bytes": self.size, "aborted": self.aborted}


def is_own(prefix: S3Location, key: str) -> bool:
    """A key dsbackup may have uploaded an archive to: directly under the prefix, not hidden."""
    p = prefix.prefix
    if not key.startswith(p):
        return False
    name = key[len(p):]
    return bool(name) and "/" not in name and not name.startswith(".")


def _uploads(prefix: S3Location, hours: float, api: S3Api,
             ) -> Iterator[tuple[StaleUpload, bool]]:
    """dsbackup's unfinished uploads under `prefix`, each with whether it is stale (idle for
    `hours` or more); the parts of a recently started one are not listed (it is live)."""
    limit = timedelta(hours=hours)
    for up, now in api.list_multipart_uploads(prefix.bucket, prefix.prefix):
        if not is_own(prefix, up.key):
            continue
        loc = S3Location(prefix.bucket, up.key)
        if now - up.initiated < limit:  # started recently: live
            yield StaleUpload(loc, up.upload_id, up.initiated, up.initiated,
                              now - up.initiated, 0, 0), False
            continue
        last, count, size = up.initiated, 0, 0
        try:
            for part in api.list_parts(prefix.bucket, up.key, up.upload_id):
                last = max(last, part.last_modified)
                count += 1
                size += part.size
        except S3ApiError as exc:
            if exc.status == 404:  # finished or aborted meanwhile
                continue
            raise
        yield StaleUpload(loc, up.upload_id, up.initiated, last, now - last, count,
                          size), now - last >= limit


def find_stale(prefix: S3Location, hours: float, api: S3Api | None = None,
               ) -> list[StaleUpload]:
    """dsbackup's unfinished uploads under `prefix` idle for `hours` or more."""
    return [u for u, stale in _uploads(prefix, hours, api or S3Api.from_config()) if stale]


def live_uploads(prefix: S3Location, api: S3Api | None = None) -> list[StaleUpload]:
    """dsbackup's unfinished uploads under `prefix` that are not stale: backups being written
    now, whose parent prune keeps (docs/CLI.md `prune`). Stale is judged by the configured
    hours, 24 when they are ``off`` (a killed backup's upload then stops protecting older
    archives after a day, though nothing aborts it)."""
    hours = settings().stale_hours
    return [u for u, stale in _uploads(prefix, 24.0 if hours is None else hours,
                                       api or S3Api.from_config()) if not stale]


def abort_stale(prefix: S3Location, *, dry_run: bool = False, api: S3Api | None = None,
                ) -> list[StaleUpload]:
    """Abort (unless `dry_run`) dsbackup's stale uploads under `prefix`, each said on stderr;
    nothing when the age is ``off``. Raises ArchiveError/ConfigError when the listing fails."""
    hours = settings().stale_hours
    if hours is None:
        return []
    api = api or S3Api.from_config()
    done = []
    for st in find_stale(prefix, hours, api):
        what = (f"{st.location}: {'would abort' if dry_run else 'aborted'} an unfinished "
                f"multipart upload idle for {_age(st.idle)} ({st.parts} part(s), "
                f"{st.size / 1e6:.1f} MB; an interrupted backup's)")
        if not dry_run:
            if not api.abort_multipart_upload(st.location.bucket, st.location.key,
                                              st.upload_id):
                continue  # gone meanwhile
            st = StaleUpload(**{**st.__dict__, "aborted": True})
        log.warning("%s", what)
        done.append(st)
    return done


def clean_before_backup(loc: S3Location) -> None:
    """The backup's turn: abort stale uploads of `loc`'s prefix; a failure is a warning (the
    backup goes on)."""
    if settings().stale_hours is None:
        return
    try:
        abort_stale(loc.parent)
    except DsBackupError as exc:
        log.warning("%s: could not check for stale multipart uploads (%s); the backup goes "
                    "on", loc.parent, scrub(str(exc)))
    except Exception as exc:  # noqa: BLE001 - housekeeping never fails the backup
        log.warning("%s: could not check for stale multipart uploads (%s: %s); the backup "
                    "goes on", loc.parent, type(exc).__name__, scrub(str(exc))[:200])


def _age(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s >= 2 * 86400:
        return f"{s // 86400} days"
    if s >= 3600:
        return f"{s / 3600:.1f} hours"
    return f"{s} s"
