"""Configuration and per-schedule records of the scheduler."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dsbackup.errors import ConfigError
from dsbackup.scheduler.cron import CronSchedule, get_zone
from dsbackup.scheduler.retention import RetentionPolicy
from dsbackup.scheduler.secret import Secret
from dsbackup.storage import S3Location, as_location

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TLS_MODES = ("starttls", "tls", "none")


@dataclass
class NotificationConfig:
    """Where to report backup results. Every field is optional; unset services are off.

    ``timeout`` bounds each notification (all retries included) in seconds. Secrets (the SMTP
    password, the webhook URL and header values, the ping URLs) may be given as ``str``; they
    are held as :class:`~dsbackup.scheduler.secret.Secret`, whose printed forms are redacted.
    A login over an unencrypted connection (``smtp_tls="none"`` with a username) is refused
    unless ``smtp_allow_plaintext_auth`` is set.
    """

    email_on_failure: bool = True
    email_on_success: bool = False
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_tls: str = "starttls"  # "starttls", "tls" (implicit TLS, port 465) or "none"
    smtp_username: str | None = None
    smtp_password: Secret | None = field(default=None, repr=False)
    smtp_from: str = "dsbackup@localhost"
    smtp_ca_file: str | None = None
    smtp_allow_plaintext_auth: bool = False
    recipients: list[str] = field(default_factory=list)
    webhook_url: Secret | None = field(default=None, repr=False)
    webhook_headers: dict[str, Secret] = field(default_factory=dict, repr=False)
    webhook_on_success: bool = True
    webhook_on_failure: bool = True
    webhook_retries: int = 3
    ping_start_url: Secret | None = field(default=None, repr=False)
    ping_success_url: Secret | None = field(default=None, repr=False)
    ping_failure_url: Secret | None = field(default=None, repr=False)
    timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("smtp_password", "webhook_url", "ping_start_url", "ping_success_url",
                     "ping_failure_url"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Secret):
                setattr(self, name, Secret(value))
        self.webhook_headers = {k: Secret(v) for k, v in self.webhook_headers.items()}
        if isinstance(self.recipients, str):
            self.recipients = [self.recipients]
        if self.smtp_tls not in TLS_MODES:
            raise ConfigError(f"smtp_tls must be one of {', '.join(TLS_MODES)}")
        if self.timeout <= 0:
            raise ConfigError("notification timeout must be positive")
        if self.webhook_retries < 0:
            raise ConfigError("webhook_retries must be >= 0")
        if self.smtp_host and not self.recipients:
            raise ConfigError("smtp_host is set but there are no recipients")
        if (self.smtp_host and self.smtp_username and self.smtp_tls == "none"
                and not self.smtp_allow_plaintext_auth):
            raise ConfigError("email: a login (username) over tls = \"none\" would send the "
                              "password unencrypted; use tls = \"starttls\" or \"tls\", or set "
                              "allow_plaintext_auth = true")

    def secrets(self) -> list[str]:
        """Strings that must never appear in logs or machine output."""
        out = [self.smtp_password, self.webhook_url, self.ping_start_url,
               self.ping_success_url, self.ping_failure_url, *self.webhook_headers.values()]
        return [s.reveal() for s in out if s]


@dataclass
class SchedulerConfig:
    """Settings shared by every schedule of one scheduler (one state directory)."""

    default_backup_dir: Path = Path("backups")
    state_path: Path = Path("dsbackup-state")
    retention_policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    concurrent_backups: int = 1
    health_check_interval: timedelta | None = timedelta(hours=1)
    notification_config: NotificationConfig = field(default_factory=NotificationConfig)
    time_zone: str = "UTC"
    misfire_grace_time: timedelta | None = None  # None: always one catch-up run after downtime
    verify_after_backup: bool = True
    health_deep_sample: float = 0.1  # fraction of chunks a health check inflates and checks
    min_free_bytes: int | None = None
    min_free_ratio: float | None = 0.05
    metrics_port: int | None = None
    metrics_textfile: Path | None = None
    poll_interval: float = 30.0  # longest sleep of the daemon loop (seconds)

    def __post_init__(self) -> None:
        self.default_backup_dir = _dir(self.default_backup_dir)
        self.state_path = Path(self.state_path)
        if self.metrics_textfile is not None:
            self.metrics_textfile = Path(self.metrics_textfile)
        get_zone(self.time_zone)
        _typed("concurrent_backups", self.concurrent_backups, int)
        _typed("health_deep_sample", self.health_deep_sample, (int, float))
        _typed("poll_interval", self.poll_interval, (int, float))
        _typed("verify_after_backup", self.verify_after_backup, bool)
        if self.metrics_port is not None:
            _typed("metrics_port", self.metrics_port, int)
            if not 0 <= self.metrics_port <= 65535:
                raise ConfigError(f"metrics_port must be within 0..65535, not {self.metrics_port}")
        if self.concurrent_backups < 1:
            raise ConfigError("concurrent_backups must be >= 1")
        if not 0.0 <= self.health_deep_sample <= 1.0:
            raise ConfigError("health_deep_sample must be within 0..1")
        if self.poll_interval <= 0:
            raise ConfigError("poll_interval must be positive")
        if self.misfire_grace_time is not None and (
                not isinstance(self.misfire_grace_time, timedelta)
                or self.misfire_grace_time <= timedelta(0)):
            # 0 skipped every run the loop noticed a moment after its slot
            raise ConfigError(f"misfire_grace_time must be a positive duration (None: always "
                              f"catch up), not {self.misfire_grace_time!r}")


def _typed(name: str, value: Any, kinds: type | tuple[type, ...]) -> None:
    """A TypeError would come much later: refuse a wrong type now (booleans are not numbers)."""
    if (isinstance(value, bool) and kinds is not bool) or not isinstance(value, kinds):
        raise ConfigError(f"{name} must be {getattr(kinds, '__name__', 'a number')}, "
                          f"not {value!r}")


@dataclass
class ScheduleStatistics:
    """Counters of one schedule, persisted with the state."""

    runs: int = 0
    successes: int = 0
    failures: int = 0
    skipped: int = 0  # slots not run: the previous run was still going, or missed downtime
    runs_since_full: int = 0  # runs (failed ones too) since the last successful full backup
    total_duration: float = 0.0
    last_success: datetime | None = None
    last_failure: datetime | None = None

    @property
    def average_duration(self) -> float | None:
        return self.total_duration / self.runs if self.runs else None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.runs if self.runs else None


@dataclass
class RunRecord:
    """The result of one run."""

    ok: bool
    started: datetime
    finished: datetime
    trigger: str  # "schedule", "catch-up", "manual"
    archive: str | None = None
    fingerprint: str | None = None
    size: int | None = None
    keys: int | None = None
    verified: bool | None = None
    error: str | None = None
    error_type: str | None = None
    exit_code: int = 0
    parent: str | None = None  # the parent archive of an incremental run
    fallback: str | None = None  # why a full backup was made although an incremental was due
    pruned: list[str] = field(default_factory=list)
    notified: dict[str, bool] = field(default_factory=dict)  # service -> delivered

    @property
    def duration(self) -> float:
        return (self.finished - self.started).total_seconds()


@dataclass
class ScheduledBackup:
    """One scheduled backup job and its live state.

    ``source`` is a datastore URI (``"lmdb:/path"``) or a datastore object. ``backup_config`` is
    a ``BackupConfig`` or a mapping of its fields. ``name`` prefixes the archive names
    ``<name>_<YYYYmmdd_HHMMSS>.tar.gz`` (UTC time). With ``incremental``, each run uses the newest
    archive of the schedule as parent, and every ``full_every``-th run is a full backup.
    """

    id: str
    name: str
    schedule: str
    source: Any
    backup_config: Any = None
    enabled: bool = True
    backup_dir: Path | None = None
    retention_policy: RetentionPolicy | None = None
    incremental: bool = False
    full_every: int = 7
    timeout: timedelta | None = None
    last_run: datetime | None = None
    next_run: datetime | None = None
    last_result: RunRecord | None = None
    statistics: ScheduleStatistics = field(default_factory=ScheduleStatistics)

    def __post_init__(self) -> None:
        for name in ("id", "name", "schedule"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"schedule {name} must be a string, not "
                                  f"{getattr(self, name)!r}")
        if not isinstance(self.enabled, bool) or not isinstance(self.incremental, bool):
            raise ConfigError("enabled and incremental must be booleans")
        if isinstance(self.full_every, bool) or not isinstance(self.full_every, int):
            raise ConfigError(f"full_every must be an integer, not {self.full_every!r}")
        if not _ID.fullmatch(self.id):
            raise ConfigError(f"invalid schedule id {self.id!r} (letters, digits, . _ -)")
        if not _ID.fullmatch(self.name):
            raise ConfigError(f"invalid schedule name {self.name!r} (letters, digits, . _ -)")
        if self.full_every < 1:
            raise ConfigError("full_every must be >= 1")
        if self.backup_dir is not None:
            self.backup_dir = _dir(self.backup_dir)
        CronSchedule(self.schedule)  # validate early

    def source_label(self) -> str:
        return self.source if isinstance(self.source, str) else type(self.source).__name__


def _dir(value: Any) -> Any:
    """A backup directory: a Path, or an S3 prefix (``s3://BUCKET/PREFIX/``; the state stays
    local)."""
    loc = as_location(value)
    if isinstance(loc, S3Location):
        return S3Location(loc.bucket, loc.prefix)
    return Path(loc)


def env_secret(value: str | None, env_name: str | None) -> str | None:
    """A secret given inline or through an environment variable (the variable wins)."""
    if env_name:
        if env_name not in os.environ:
            raise ConfigError(f"environment variable {env_name} (a secret) is not set")
        return os.environ[env_name]
    return value
