"""Load a scheduler configuration file (TOML). The format is documented in docs/SCHEDULER.md.

Everything is checked here, at load time (types, ranges, cron expressions that can fire, time
zones, e-mail addresses, URLs, unknown keys, the backup settings of each schedule), so that
``schedule list`` refuses a bad file exactly as ``schedule run`` does and a daemon never fails
later on a value it accepted. Each error is one line: file, table and key, what was expected.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbackup.errors import ConfigError
from dsbackup.scheduler.config import (
    TLS_MODES,
    NotificationConfig,
    ScheduledBackup,
    SchedulerConfig,
    env_secret,
)
from dsbackup.scheduler.config_check import Table, shown
from dsbackup.scheduler.cron import CronSchedule, get_zone
from dsbackup.scheduler.retention import RULES, RetentionPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


@dataclass
class LoadedConfig:
    scheduler: SchedulerConfig
    schedules: list[ScheduledBackup]


def parse_retention(t: Table) -> RetentionPolicy:
    t.check_keys({f"keep_{r}" for r in RULES} | {"max_age"})
    kw: dict[str, Any] = {f"keep_{r}": t.integer(f"keep_{r}", 0, lo=-1) for r in RULES}
    raw = t.data.get("max_age")
    if isinstance(raw, (bool, int, float)) and not (
            not isinstance(raw, bool) and raw >= 86400):
        # a bare number is seconds: `max_age = 30` meant as days would prune nearly every
        # archive, so under a day (or a boolean) it needs its unit; a day or more in seconds
        # (configs written so before) stays
        raise t.error("max_age", 'expected a duration with its unit ("30d", "12w", "1y"); a '
                                 'bare number is seconds')
    max_age = t.duration("max_age")
    if max_age is not None and max_age.total_seconds() <= 0:
        raise t.error("max_age", "expected a positive duration")
    return RetentionPolicy(**kw, max_age=max_age)


def _secret(t: Table, key: str, env_key: str) -> str | None:
    """A secret given inline (``key``) or by the name of an environment variable (``env_key``)."""
    value = t.string(key, None, secret=True)
    env = t.string(env_key, None)
    if value is not None and env is not None:
        raise t.error(key, f"give either {key} or {env_key}, not both")
    try:
        return env_secret(value, env)
    except ConfigError as exc:
        raise t.error(env_key, str(exc)) from None


def parse_notifications(t: Table, base: Path) -> NotificationConfig:
    t.check_keys({"timeout", "email", "webhook", "ping"})
    kw: dict[str, Any] = {}
    timeout = t.duration("timeout")
    if timeout is not None:
        if timeout.total_seconds() <= 0:
            raise t.error("timeout", "expected a positive duration")
        kw["timeout"] = timeout.total_seconds()

    e = t.table("email")
    e.check_keys({"on_failure", "on_success", "host", "port", "tls", "username", "password",
                  "password_env", "from", "to", "ca_file", "allow_plaintext_auth"})
    kw["email_on_failure"] = e.boolean("on_failure", True)
    kw["email_on_success"] = e.boolean("on_success", False)
    kw["smtp_host"] = e.string("host", None)
    kw["smtp_port"] = e.integer("port", 587, lo=1, hi=65535)
    tls = e.string("tls", "tls" if kw["smtp_port"] == 465 else "starttls")
    e.expect("tls", tls in TLS_MODES, " or ".join(f'"{m}"' for m in TLS_MODES), tls)
    kw["smtp_tls"] = tls
    kw["smtp_username"] = e.string("username", None)
    kw["smtp_password"] = _secret(e, "password", "password_env")
    if e.has("from"):
        kw["smtp_from"] = e.email("from", e.data["from"])
    kw["recipients"] = e.emails("to") or []
    ca_file = e.path("ca_file", base)
    if ca_file is not None and not ca_file.is_file():
        raise e.error("ca_file", f"{ca_file}: no such file (a PEM file of CA certificates)")
    kw["smtp_ca_file"] = None if ca_file is None else str(ca_file)
    kw["smtp_allow_plaintext_auth"] = e.boolean("allow_plaintext_auth", False)
    if kw["smtp_host"] is None:
        for key in ("to", "username", "password", "password_env"):
            if e.has(key):
                raise e.error(key, "is set but host is not (no e-mail would be sent)")
    elif not kw["recipients"]:
        raise e.error("to", "missing: host is set but there are no recipients")
    if (kw["smtp_host"] and kw["smtp_username"] and tls == "none"
            and not kw["smtp_allow_plaintext_auth"]):
        raise e.error("tls", '"none" with a username would send the password unencrypted: '
                      'use "starttls" or "tls", or set allow_plaintext_auth = true')

    w = t.table("webhook")
    w.check_keys({"url", "url_env", "headers", "on_success", "on_failure", "retries"})
    url = _secret(w, "url", "url_env")
    if url is not None:
        w.url("url" if w.has("url") else "url_env", url)
    elif w.has("headers"):
        raise w.error("headers", "are set but url is not (no webhook would be sent)")
    kw["webhook_url"] = url
    kw["webhook_headers"] = w.headers("headers")
    kw["webhook_on_success"] = w.boolean("on_success", True)
    kw["webhook_on_failure"] = w.boolean("on_failure", True)
    kw["webhook_retries"] = w.integer("retries", 3, lo=0, hi=100)

    p = t.table("ping")
    p.check_keys({"start", "success", "failure"})
    for key in ("start", "success", "failure"):
        if p.has(key):
            kw[f"ping_{key}_url"] = p.url(key, p.data[key])
    return NotificationConfig(**kw)


_SCHED_KEYS = {"backup_dir", "s3_endpoint", "s3_profile", "s3_stale_hours", "state_dir", "time_zone", "concurrent_backups",
               "health_check_interval", "misfire_grace_time", "verify_after_backup",
               "health_deep_sample", "min_free_bytes", "min_free_ratio", "metrics_port",
               "metrics_textfile", "poll_interval"}
_JOB_KEYS = {"id", "name", "cron", "source", "enabled", "backup_dir", "incremental",
             "full_every", "timeout", "backup", "retention"}


def _zone(t: Table, key: str, default: str) -> str:
    zone = t.string(key, default)
    try:
        get_zone(zone)
    except ConfigError:
        raise t.error(key, f'unknown time zone "{zone}" (expected an IANA name: '
                      '"Europe/Berlin", "UTC")') from None
    return zone


def parse_scheduler(t: Table, base: Path) -> dict[str, Any]:
    t.check_keys(_SCHED_KEYS)
    endpoint = t.string("s3_endpoint", None)
    if endpoint is not None:  # s3:// backup_dir: the endpoint of an S3-compatible server
        from dsbackup.storage.s3config import check_endpoint, configure

        try:
            check_endpoint(endpoint)
        except ConfigError as exc:
            raise t.error("s3_endpoint", str(exc)) from None
        configure(endpoint)
    profile = t.string("s3_profile", None)
    if profile is not None:  # the AWS profile of s3:// credentials (as --s3-profile)
        from dsbackup.storage.s3config import configure

        t.expect("s3_profile", bool(profile.strip()), "a profile name", profile)
        configure(profile=profile.strip())
    if t.has("s3_stale_hours"):  # killed backups' unfinished uploads: aborted after this
        from dsbackup.storage.s3config import configure, parse_stale_hours

        raw = t.data["s3_stale_hours"]
        t.expect("s3_stale_hours", isinstance(raw, (int, float, str)) and not isinstance(
            raw, bool), 'a number of hours or "off"', raw)
        try:
            parse_stale_hours(raw)
        except ConfigError as exc:
            raise t.error("s3_stale_hours", str(exc)) from None
        configure(stale_hours=str(raw))
    kw: dict[str, Any] = {
        "default_backup_dir": t.location("backup_dir", base, "backups"),
        "state_path": t.path("state_dir", base, "dsbackup-state"),
        "metrics_textfile": t.path("metrics_textfile", base),
        "min_free_bytes": t.size("min_free_bytes"),
        "time_zone": _zone(t, "time_zone", "UTC"),
        "concurrent_backups": t.integer("concurrent_backups", 1, lo=1),
        "verify_after_backup": t.boolean("verify_after_backup", True),
        "health_deep_sample": t.number("health_deep_sample", 0.1, lo=0, hi=1),
        "min_free_ratio": t.number("min_free_ratio", 0.05, lo=0, hi=1),
        "metrics_port": t.integer("metrics_port", None, lo=0, hi=65535),
        "poll_interval": t.number("poll_interval", 30.0, positive=True),
    }
    if t.has("health_check_interval"):
        v = t.data["health_check_interval"]
        kw["health_check_interval"] = (None if v in ("", "off") else
                                       t.duration("health_check_interval"))
        if kw["health_check_interval"] is not None and not kw["health_check_interval"]:
            raise t.error("health_check_interval", 'expected a positive duration or "off"')
    if t.has("misfire_grace_time"):
        kw["misfire_grace_time"] = t.duration("misfire_grace_time")
        if not kw["misfire_grace_time"]:  # 0 skipped every run noticed after its second
            raise t.error("misfire_grace_time", "expected a positive duration")
    return kw


def parse_encryption(t: Table, base: Path) -> dict[str, str]:
    """``encryption = {passphrase_file = "PATH"}`` or ``{key_file = "PATH"}`` of a schedule's
    backup table (docs/ENCRYPTION.md): the file is read now, to refuse a typo before the first
    run, and again at each run; only its path is kept (never the secret)."""
    from dsbackup.archive import crypto

    e = t.table("encryption")
    e.check_keys({"passphrase_file", "key_file"})
    given = [k for k in ("passphrase_file", "key_file") if e.has(k)]
    if len(given) != 1:
        raise t.error("encryption", "expected exactly one of passphrase_file and key_file")
    path = e.path(given[0], base)
    try:
        (crypto.load_passphrase_file if given[0] == "passphrase_file"
         else crypto.load_key_file)(path).close()
    except ConfigError as exc:
        raise e.error(given[0], str(exc)) from None
    return {given[0]: str(path)}


def parse_backup_settings(t: Table, base: Path | None = None) -> dict[str, Any] | None:
    """The ``[schedule.backup]`` table: BackupConfig fields, checked by BackupConfig itself
    after their types are checked here. ``encryption`` names a key file or passphrase file
    (relative to `base`, the config file's directory)."""
    from dsbackup.engine.config import MAX_WORKERS, BackupConfig

    known = {f.name for f in dataclasses.fields(BackupConfig)}
    t.check_keys(known)
    kw: dict[str, Any] = {}
    spec = parse_encryption(t, base or Path.cwd()) if "encryption" in t.data else None
    for key in t.data:
        if key == "encryption":
            continue
        if key in ("compression_level",):
            kw[key] = t.integer(key, lo=0, hi=19)  # per codec: BackupConfig checks
        elif key in ("chunk_size", "workers"):
            kw[key] = t.integer(key, lo=1)
            if key == "workers" and kw[key] > MAX_WORKERS:
                # a file written before the bound: its backups still run (docs/SCHEDULER.md)
                log.warning("%s: %s workers = %d is more than dsbackup runs (1 to %d); using %d",
                            t.file, t.where, kw[key], MAX_WORKERS, MAX_WORKERS)
                kw[key] = MAX_WORKERS
        elif key == "chunk_max_bytes":
            kw[key] = t.size(key)
        elif key == "timeout":
            d = t.duration(key)
            if d is None or d.total_seconds() <= 0:
                raise t.error(key, "expected a positive duration")
            kw[key] = d.total_seconds()
        elif key in ("verify_integrity", "include_metadata", "trust_content_keys",
                     "trust_parent", "skip_foreign", "overwrite", "datastore_only", "resume"):
            kw[key] = t.boolean(key)
        elif key == "exclude_patterns":
            v = t.data[key]
            items = [v] if isinstance(v, str) else v
            t.expect(key, isinstance(items, list) and all(isinstance(p, str) and p
                                                          for p in items),
                     'a list of key patterns (["/pins/**"])', v)
            kw[key] = list(items)
        else:  # a field added to BackupConfig later: its own checks apply
            kw[key] = t.data[key]
    try:
        BackupConfig(**kw)
    except (ConfigError, TypeError, ValueError) as exc:
        raise t.error(None, str(exc)) from None
    if spec is not None:
        kw["encryption"] = spec
    return kw or None


def _check_scheme(t: Table, source: str) -> None:
    """A typo in the datastore scheme (``lmbd:``) is refused now, not at the first run."""
    import difflib

    from dsbackup.datastores.registry import _CUSTOM, SCHEMES, check_uri_params, parse_uri

    scheme, _path, _params = parse_uri(source)
    known = sorted({*SCHEMES, *_CUSTOM})
    if scheme is not None and scheme not in known:
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f"did you mean '{close[0]}:'?" if close else f"known: {', '.join(known)}"
        raise t.error("source", f"unknown datastore scheme '{scheme}:' ({hint})")
    try:  # ?sycn=0, ?sync=ture: refused now, not at every run
        check_uri_params(source)
    except ConfigError as exc:
        raise t.error("source", str(exc)) from None


def _source_from(base: Path, source: str) -> str:
    """The datastore URI with a relative path made relative to the config file's directory
    (as every path of the file is), not to the directory the daemon happens to run in."""
    from dsbackup.datastores.registry import parse_uri

    scheme, _path, _params = parse_uri(source)
    if scheme == "memory":
        return source
    prefix = source[:len(scheme) + 1] if scheme is not None else ""
    rest = source[len(prefix):]
    path, q, query = rest.partition("?") if scheme is not None else (rest, "", "")
    if not path or path.startswith(("/", "~")):
        return source
    return f"{prefix}{base / path}{q}{query}"


def parse_schedule(file: Path, i: int, job: Any, base: Path) -> ScheduledBackup:
    t = Table(file, f"[[schedule]] #{i + 1}", job)
    if isinstance(job.get("id"), str) and job["id"]:
        t.where = f'[[schedule]] #{i + 1} "{job["id"]}"'
    t.check_keys(_JOB_KEYS)
    sid = t.string("id")
    cron = t.string("cron")
    try:
        CronSchedule(cron)
    except ConfigError as exc:
        raise t.error("cron", str(exc)) from None
    source = _source_from(base, t.string("source"))
    _check_scheme(t, source)
    full_every = t.integer("full_every", 7, lo=1)
    incremental = t.boolean("incremental", False)
    timeout = t.duration("timeout")
    if timeout is not None and timeout.total_seconds() <= 0:
        raise t.error("timeout", "expected a positive duration")
    backup = Table(file, f'[schedule.backup] of "{sid}"', job.get("backup", {}))
    retention = (parse_retention(Table(file, f'[schedule.retention] of "{sid}"',
                                       job["retention"])) if "retention" in job else None)
    # checked outside the try: their errors already name the file and table (the try's
    # prefix doubled them: 'f.toml: [[schedule]] #1 "s": f.toml: [schedule.backup] ...')
    backup_config = parse_backup_settings(backup, base)
    name, enabled = t.string("name", sid), t.boolean("enabled", True)
    backup_dir = t.location("backup_dir", base)
    try:
        return ScheduledBackup(
            id=sid, name=name, schedule=cron, source=source,
            backup_config=backup_config, enabled=enabled,
            backup_dir=backup_dir, retention_policy=retention,
            incremental=incremental, full_every=full_every, timeout=timeout)
    except ConfigError as exc:
        raise t.error(None, str(exc)) from None


def _warn_replaced_retention(path: Path, default: Any, job: Any, sid: str) -> None:
    """``[schedule.retention]`` replaces ``[retention]`` whole: ``keep_daily = 14`` alone
    keeps no weekly, monthly or yearly archive of that schedule, whatever ``[retention]``
    says. Said at load when a keep_* rule of ``[retention]`` is not in the schedule's table
    (giving it there, 0 included, says the replacement is meant)."""
    own = job.get("retention") if isinstance(job, dict) else None
    if not isinstance(own, dict) or not isinstance(default, dict):
        return
    dropped = [k for k, v in default.items()
               if k.startswith("keep_") and k not in own and v not in (0, None)]
    if dropped:  # (a max_age not given keeps more: no warning)
        log.warning('%s: [schedule.retention] of "%s" replaces [retention] whole: its %s '
                    "do not apply to this schedule, whose archives they would keep (give "
                    "them in [schedule.retention] too, or as 0 to say so)", path, sid,
                    ", ".join(f"{k} = {default[k]}" for k in dropped))


def load_config(path: str | Path, *, require_schedules: bool = True) -> LoadedConfig:
    """Parse and check a TOML configuration file; relative paths are relative to the file.

    Raises ConfigError (one line: file, table and key, what was expected) for anything wrong,
    and for a file without any ``[[schedule]]`` unless ``require_schedules`` is False.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: "
                          f"{exc.strerror or type(exc).__name__}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    top = Table(path, "top level", doc)
    top.check_keys({"scheduler", "retention", "notifications", "schedule"})
    # absolute: the paths go into the state (archives of the catalog), which a run from
    # another directory (`--config ../x.toml`, the daemon at /) must find again
    base = path.absolute().parent.resolve()  # one spelling whatever the cwd (other/../x)
    kw = parse_scheduler(Table(path, "[scheduler]", doc.get("scheduler", {})), base)
    kw["retention_policy"] = parse_retention(Table(path, "[retention]", doc.get("retention", {})))
    kw["notification_config"] = parse_notifications(
        Table(path, "[notifications]", doc.get("notifications", {})), base)
    try:
        scheduler = SchedulerConfig(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [scheduler]: {exc}") from None

    jobs = doc.get("schedule", [])
    if not isinstance(jobs, list):
        raise ConfigError(f"{path}: schedule: expected [[schedule]] tables, got "
                          f"{shown(jobs)}")
    schedules: list[ScheduledBackup] = []
    seen: set[str] = set()
    for i, job in enumerate(jobs):
        sched = parse_schedule(path, i, job, base)
        _warn_replaced_retention(path, doc.get("retention", {}), job, sched.id)
        if sched.id in seen:
            raise ConfigError(f"{path}: [[schedule]] #{i + 1}: duplicate id {sched.id!r}")
        seen.add(sched.id)
        schedules.append(sched)
    if require_schedules and not schedules:
        raise ConfigError(f"{path}: no [[schedule]] table: nothing to schedule")
    return LoadedConfig(scheduler, schedules)
