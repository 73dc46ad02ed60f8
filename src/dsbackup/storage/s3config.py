"""Where S3 settings come from (docs/STORAGE.md "Credentials"), and keeping secrets out of text.

Order: ``--s3-endpoint`` (or the scheduler's ``s3_endpoint``) for the endpoint; then the
standard AWS environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``); then the shared files (``~/.aws/credentials`` and
``~/.aws/config``, or ``AWS_SHARED_CREDENTIALS_FILE`` / ``AWS_CONFIG_FILE``), for the profile
``--s3-profile`` (the environment's keys then unused), ``AWS_PROFILE`` or ``default``
(:mod:`dsbackup.storage.s3profile`). Without keys from either (or with a profile whose role,
web identity or SSO comes before its keys), temporary credentials from the AWS chain
(:mod:`dsbackup.storage.s3creds`: the profile's role, SSO or ``credential_process``, web
identity, container credentials, instance metadata) sign every request, ours and obstore's. Request bodies are signed over plain http only
(:func:`sign_payload`); the CA bundle of a private CA is :mod:`dsbackup.storage.s3tls`'s.

Every secret value found is registered with :func:`scrub`, which every error message from
the S3 client passes through: credentials never reach logs, ``--json`` or exceptions.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dsbackup.errors import ConfigError
from dsbackup.storage.s3files import keys_first
from dsbackup.storage.s3files import load as load_profiles

_secrets: set[str] = set()
_lock = threading.Lock()

LOOPBACK_HOSTS = ("localhost",)
DEFAULT_STALE_HOURS = 24.0


def scrub(text: str) -> str:
    """`text` with every known secret replaced by ``***``."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for s in known:
        if s:
            text = text.replace(s, "***")
    return text


def register_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


@dataclass
class S3Settings:
    """The client settings of this process; ``configure`` changes the endpoint."""

    endpoint: str | None = None
    part_size: int = 8 << 20  # bytes per uploaded part (S3 minimum: 5 MiB)
    concurrency: int = 2  # parts in flight per upload (memory: part_size x (this + 1))
    read_concurrency: int = 4  # ranged GETs in flight per open archive
    # planned ranges (ls's catalogs) less than this apart share one GET (s3plan.py)
    read_gap_kb: int = 64
    retries: int = 5
    timeout_s: float = 60.0  # per request, and the retry window
    # unfinished uploads of a prefix idle this long are aborted (None: never; s3stale.py)
    stale_hours: float | None = DEFAULT_STALE_HOURS
    extra: dict[str, str] = field(default_factory=dict)
    # --s3-profile: the profile named on the command line (the environment's keys unused)
    profile: str | None = None


_settings = S3Settings()
_tuned = False
_stale_given = False  # --s3-stale-hours or the scheduler's s3_stale_hours beat the environment


def settings() -> S3Settings:
    """The settings, with the DSBACKUP_S3_* environment applied on first use."""
    global _tuned
    if not _tuned:
        _env_tuning()
        _tuned = True
    return _settings


def configure(endpoint: str | None = None, stale_hours: str | float | None = None,
              profile: str | None = None) -> None:
    """Set the endpoint (``--s3-endpoint``), the stale-upload age (``--s3-stale-hours``) and
    the profile (``--s3-profile``); None keeps what the environment gives."""
    global _stale_given
    if profile:
        _settings.profile = profile
    if endpoint:
        check_endpoint(endpoint)
        _settings.endpoint = endpoint
    if stale_hours is not None:  # before the environment: it wins over DSBACKUP_S3_STALE_HOURS
        _settings.stale_hours = parse_stale_hours(stale_hours)
        _stale_given = True
    _env_tuning()


def parse_stale_hours(text: str | float) -> float | None:
    """Hours (a positive number) after which an idle unfinished upload is stale, or ``off``."""
    if isinstance(text, str) and text.strip().lower() in ("off", "never", "no"):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"stale-upload age {text!r}: expected a positive number of hours "
                          "(e.g. 24 or 0.5) or 'off'")
    return value


# each variable: its setting, its type and its range (a day per request at most: the client
# keeps the timeout as a duration; 5 GiB, the S3 maximum part size)
_ENV_TUNING: tuple[tuple[str, str, type, float, float], ...] = (
    ("DSBACKUP_S3_RETRIES", "retries", int, 0, 100),
    ("DSBACKUP_S3_TIMEOUT", "timeout_s", float, 0.001, 86400),
    ("DSBACKUP_S3_PART_MB", "part_size", int, 5, 5 << 10),
    ("DSBACKUP_S3_CONCURRENCY", "concurrency", int, 1, 256),
    ("DSBACKUP_S3_READ_CONCURRENCY", "read_concurrency", int, 1, 256),
    ("DSBACKUP_S3_GAP_KB", "read_gap_kb", int, 0, 8 << 10),
)


def _env_tuning() -> None:
    for name, attr, conv, lo, hi in _ENV_TUNING:
        raw = os.environ.get(name)
        if raw:
            try:
                value = conv(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None
            if not lo <= value <= hi:  # nan too
                raise ConfigError(f"{name}={raw!r}: expected a number from {lo:g} to {hi:g}")
            setattr(_settings, attr, value << 20 if attr == "part_size" else value)
    raw = os.environ.get("DSBACKUP_S3_STALE_HOURS")
    if raw and not _stale_given:
        try:
            _settings.stale_hours = parse_stale_hours(raw)
        except ConfigError as exc:
            raise ConfigError(f"DSBACKUP_S3_STALE_HOURS: {exc}") from None
    if _settings.part_size < 5 << 20:
        raise ConfigError("DSBACKUP_S3_PART_MB must be at least 5 (the S3 minimum part size)")


def check_endpoint(endpoint: str) -> str:
    """An http(s) URL; plain http only for a loopback address (127.0.0.1, ::1, localhost)."""
    try:
        u = urlsplit(endpoint)
        u.port  # noqa: B018 - raises ValueError for a port past 65535 (the client would panic)
    except ValueError as exc:  # `http://[::1`: Invalid IPv6 URL
        raise ConfigError(f"S3 endpoint {endpoint!r} is not a valid URL: {exc}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"S3 endpoint {endpoint!r} is not an http(s) URL")
    if u.scheme == "http" and not _loopback(u.hostname):
        raise ConfigError(f"S3 endpoint {endpoint!r}: plain http is refused except on the "
                          "loopback address (credentials and data would cross the network "
                          "unencrypted); use https")
    return endpoint


def _loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def profile_name() -> str:
    """``--s3-profile``, else ``AWS_PROFILE``, else ``default``."""
    return _settings.profile or os.environ.get("AWS_PROFILE") or "default"


def profile_config() -> tuple[dict[str, str], str]:
    """The settings of the profile ``AWS_PROFILE`` (default ``default``) in the shared files
    (:mod:`dsbackup.storage.s3profile`: botocore's parsing), and where it is for messages
    (``profile P of FILE``)."""
    profiles, name = load_profiles(), profile_name()
    return profiles.get(name) or {}, profiles.where(name)


def sign_payload(endpoint: str | None) -> bool:
    """Whether request bodies are signed (SigV4 ``x-amz-content-sha256`` = their SHA-256):
    over plain http, as the AWS SDKs do; over https (AWS itself included) they are sent as
    ``UNSIGNED-PAYLOAD``, TLS protecting them in transit, unless ``DSBACKUP_S3_SIGN_PAYLOAD``
    asks for signing everywhere (a server that refuses unsigned payloads)."""
    raw = os.environ.get("DSBACKUP_S3_SIGN_PAYLOAD", "").strip().lower()
    if raw in ("1", "true", "yes", "on", "always"):
        return True
    if raw not in ("", "0", "false", "no", "off", "auto"):
        raise ConfigError(f"DSBACKUP_S3_SIGN_PAYLOAD={raw!r}: expected 1 (sign request bodies "
                          "over https too) or 0/auto (sign over plain http only, the default)")
    return urlsplit(endpoint).scheme != "https" if endpoint else False


def _refuse_partial_keys(env: os._Environ[str] | dict[str, str]) -> None:
    """One of the two key variables set without the other: a mistake (a secret lost from a
    deployment's environment), refused as botocore does (PartialCredentialsError), not taken
    as "no keys here" and answered with some other credentials (a profile's, a role's)."""
    have = [n for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if env.get(n)]
    if len(have) == 1:
        other = ({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} - set(have)).pop()
        raise ConfigError(f"{have[0]} is set but {other} is not (partial credentials): set "
                          "both, or neither to use a profile or a role's credentials")


def client_config() -> dict[str, str]:
    """The obstore S3 config: credentials, region, endpoint (path-style with an endpoint),
    payload signing (:func:`sign_payload`)."""
    env = os.environ
    profiles, name = load_profiles(), profile_name()
    conf = profiles.get(name) or {}
    out: dict[str, str] = {}
    key_id = secret = token = None
    if _settings.profile is None:  # a profile named by --s3-profile: its credentials only
        _refuse_partial_keys(env)
        key_id, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        token = env.get("AWS_SESSION_TOKEN")
    if not (key_id and secret) and keys_first(profiles, name):
        # the profile's own keys (a role, web identity, SSO before them: the chain's)
        keys = profiles.credentials.get(name, {})
        if not (keys.get("aws_access_key_id") and keys.get("aws_secret_access_key")):
            keys = profiles.config.get(name, {})
        key_id, secret = keys["aws_access_key_id"], keys["aws_secret_access_key"]
        token = keys.get("aws_session_token")
    if key_id and secret:
        out["access_key_id"] = key_id
        out["secret_access_key"] = secret
        if token:
            out["session_token"] = token
    for s in (secret, token, key_id):
        register_secret(s)
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or conf.get("region")
    endpoint = (_settings.endpoint or env.get("AWS_ENDPOINT_URL_S3")
                or env.get("AWS_ENDPOINT_URL") or conf.get("endpoint_url"))
    if endpoint:
        check_endpoint(endpoint)
        out["endpoint"] = endpoint
        out["virtual_hosted_style_request"] = "false"  # path-style: S3-compatible servers
    out["region"] = region or "us-east-1"
    out["unsigned_payload"] = "false" if sign_payload(endpoint) else "true"
    out.update(_settings.extra)
    return out
