"""Load a scheduler configuration file (TOML). The format is documented in docs/SCHEDULER.md."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbackup.errors import ConfigError
from dsbackup.scheduler.config import (
    NotificationConfig,
    ScheduledBackup,
    SchedulerConfig,
    env_secret,
)
from dsbackup.scheduler.durations import parse_duration, parse_size
from dsbackup.scheduler.retention import RULES, RetentionPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class LoadedConfig:
    scheduler: SchedulerConfig
    schedules: list[ScheduledBackup]


def _check_keys(section: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {', '.join(unknown)}")


def parse_retention(section: str, data: Mapping[str, Any]) -> RetentionPolicy:
    _check_keys(section, data, {f"keep_{r}" for r in RULES} | {"max_age"})
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k != "max_age"}
    return RetentionPolicy(**kwargs, max_age=parse_duration(data.get("max_age")))


def parse_notifications(data: Mapping[str, Any]) -> NotificationConfig:
    _check_keys("notifications", data, {"timeout", "email", "webhook", "ping"})
    kw: dict[str, Any] = {}
    if "timeout" in data:
        kw["timeout"] = parse_duration(data["timeout"]).total_seconds()
    email = data.get("email", {})
    _check_keys("notifications.email", email,
                {"on_failure", "on_success", "host", "port", "tls", "username", "password",
                 "password_env", "from", "to", "ca_file"})
    for key, field_ in (("on_failure", "email_on_failure"), ("on_success", "email_on_success"),
                        ("host", "smtp_host"), ("port", "smtp_port"), ("tls", "smtp_tls"),
                        ("username", "smtp_username"), ("from", "smtp_from"),
                        ("to", "recipients"), ("ca_file", "smtp_ca_file")):
        if key in email:
            kw[field_] = email[key]
    if "tls" not in email and email.get("port") == 465:
        kw["smtp_tls"] = "tls"
    kw["smtp_password"] = env_secret(email.get("password"), email.get("password_env"))
    hook = data.get("webhook", {})
    _check_keys("notifications.webhook", hook,
                {"url", "url_env", "headers", "on_success", "on_failure", "retries"})
    kw["webhook_url"] = env_secret(hook.get("url"), hook.get("url_env"))
    for key, field_ in (("headers", "webhook_headers"), ("on_success", "webhook_on_success"),
                        ("on_failure", "webhook_on_failure"), ("retries", "webhook_retries")):
        if key in hook:
            kw[field_] = hook[key]
    ping = data.get("ping", {})
    _check_keys("notifications.ping", ping, {"start", "success", "failure"})
    for key in ("start", "success", "failure"):
        if key in ping:
            kw[f"ping_{key}_url"] = ping[key]
    return NotificationConfig(**kw)


_SCHED_KEYS = {"backup_dir", "state_dir", "time_zone", "concurrent_backups",
               "health_check_interval", "misfire_grace_time", "verify_after_backup",
               "health_deep_sample", "min_free_bytes", "min_free_ratio", "metrics_port",
               "metrics_textfile", "poll_interval"}
_JOB_KEYS = {"id", "name", "cron", "source", "enabled", "backup_dir", "incremental",
             "full_every", "timeout", "backup", "retention"}


def load_config(path: str | Path) -> LoadedConfig:
    """Parse a TOML configuration file; relative paths are relative to the file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    _check_keys("top level", doc, {"scheduler", "retention", "notifications", "schedule"})
    base = path.parent

    def rel(p: str | None) -> Path | None:
        return None if p is None else (base / Path(p).expanduser())

    s = doc.get("scheduler", {})
    _check_keys("scheduler", s, _SCHED_KEYS)
    kw: dict[str, Any] = {
        "default_backup_dir": rel(s.get("backup_dir", "backups")),
        "state_path": rel(s.get("state_dir", "dsbackup-state")),
        "retention_policy": parse_retention("retention", doc.get("retention", {})),
        "notification_config": parse_notifications(doc.get("notifications", {})),
        "metrics_textfile": rel(s.get("metrics_textfile")),
        "min_free_bytes": parse_size(s.get("min_free_bytes")),
    }
    if "health_check_interval" in s:
        kw["health_check_interval"] = (parse_duration(s["health_check_interval"])
                                       if s["health_check_interval"] not in ("", "off") else None)
    if "misfire_grace_time" in s:
        kw["misfire_grace_time"] = parse_duration(s["misfire_grace_time"])
    for key in ("time_zone", "concurrent_backups", "verify_after_backup", "health_deep_sample",
                "min_free_ratio", "metrics_port", "poll_interval"):
        if key in s:
            kw[key] = s[key]
    scheduler = SchedulerConfig(**kw)

    schedules = []
    seen: set[str] = set()
    for i, job in enumerate(doc.get("schedule", [])):
        where = f"schedule #{i + 1}"
        _check_keys(where, job, _JOB_KEYS)
        for req in ("id", "cron", "source"):
            if req not in job:
                raise ConfigError(f"[[schedule]] #{i + 1}: missing {req!r}")
        if job["id"] in seen:
            raise ConfigError(f"[[schedule]]: duplicate id {job['id']!r}")
        seen.add(job["id"])
        schedules.append(ScheduledBackup(
            id=job["id"], name=job.get("name", job["id"]), schedule=job["cron"],
            source=job["source"], backup_config=dict(job.get("backup", {})) or None,
            enabled=job.get("enabled", True), backup_dir=rel(job.get("backup_dir")),
            retention_policy=(parse_retention(f"{where}.retention", job["retention"])
                              if "retention" in job else None),
            incremental=job.get("incremental", False), full_every=job.get("full_every", 7),
            timeout=parse_duration(job.get("timeout")),
        ))
    return LoadedConfig(scheduler, schedules)
