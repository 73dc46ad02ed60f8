"""Credentials for every S3 request, ours (:mod:`dsbackup.storage.s3api`) and obstore's
(docs/STORAGE.md "S3: endpoint, region, credentials").

Keys from the environment or ``~/.aws`` (:func:`dsbackup.storage.s3config.client_config`)
are used as they are. Without them, the standard AWS chain, in the order the AWS SDKs
(botocore) document, supplies temporary credentials: first the profile's own sources
(:mod:`dsbackup.storage.s3profile`: a role it assumes, SSO, ``credential_process``; web
identity among them, in its place), then the environment's roles
(:mod:`dsbackup.storage.s3sources`):

1. **web identity** (EKS service accounts, any OIDC): ``AWS_WEB_IDENTITY_TOKEN_FILE`` and
   ``AWS_ROLE_ARN`` (``AWS_ROLE_SESSION_NAME``; else the profile's ``web_identity_token_file``,
   ``role_arn``, ``role_session_name``), exchanged by an unsigned STS
   ``AssumeRoleWithWebIdentity`` at ``AWS_ENDPOINT_URL_STS``, ``AWS_ENDPOINT_URL`` or
   ``https://sts.REGION.amazonaws.com``; the token file is read again at each refresh;
2. **container credentials** (ECS tasks, EKS Pod Identity):
   ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` (on ``http://169.254.170.2``) or
   ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (a loopback address or one of the hosts the SDKs
   allow), with ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` / ``AWS_CONTAINER_AUTHORIZATION_TOKEN``
   sent as ``Authorization``;
3. **EC2 instance metadata, IMDSv2 only**: a session token (``PUT /latest/api/token``), then
   the role's name and its credentials under ``/latest/meta-data/iam/security-credentials/``;
   ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (default ``http://169.254.169.254``;
   ``AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6``: ``http://[fd00:ec2::254]``),
   ``AWS_EC2_METADATA_DISABLED=true`` turns it off; 1 s per request, one attempt
   (``AWS_METADATA_SERVICE_TIMEOUT``, ``AWS_METADATA_SERVICE_NUM_ATTEMPTS``), as botocore, so
   a machine off AWS learns in about a second that there is nothing there. There is no
   IMDSv1 fallback (botocore has one, obstore's client does not): AWS recommends requiring
   IMDSv2, and its unauthenticated GETs are what SSRF attacks on instances use.

The first source whose variables are set is the source (a failing web identity does not fall
through to the instance's role, as in the SDKs); instance metadata is tried when none is set.
Its credentials are kept in the process, shared by every thread and both clients, and
fetched again 15 minutes before they expire (botocore's advisory margin: one thread
refreshes, at most every 30 s, the others go on with the current ones; within 10 minutes, the mandatory margin,
every caller waits for the refresh, and its failure is theirs). A failure is one line naming
the source and why (:class:`~dsbackup.errors.S3ApiError`, exit 2) and is remembered for a few
seconds, so many requests do not each wait for a service that is not there. Every secret (keys,
session token, web identity token, container authorization token) is registered with
:func:`~dsbackup.storage.s3config.register_secret` before it can reach a message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from dsbackup.errors import ConfigError, DsBackupError, S3ApiError
from dsbackup.storage import s3profile
from dsbackup.storage.s3config import client_config, profile_name, scrub
from dsbackup.storage.s3fetch import Credentials, _env, _Failed
from dsbackup.storage.s3files import load as load_profiles
from dsbackup.storage.s3sources import Container, InstanceMetadata

__all__ = ["Container", "Credentials", "TemporaryCredentials", "chain", "reset", "static"]

log = logging.getLogger(__name__)

ADVISORY_REFRESH_S = 15 * 60  # refresh this long before expiry, keeping the old on failure
MANDATORY_REFRESH_S = 10 * 60  # within this, every caller waits for fresh credentials
FAILURE_MEMORY_S = 10.0  # a failed fetch is answered from memory this long
# an advisory refresh is tried at most this often (a source that hands out the same
# credentials until shortly before they expire is not asked again at every request)
ADVISORY_RETRY_S = 30.0


def _source() -> Callable[[], Credentials] | None:
    """The chain's source for this environment (None: instance metadata is disabled and
    nothing else is set up); _Failed when a source's settings are wrong. The profile's
    sources (a role, web identity, SSO, credential_process: s3profile.py) come first."""
    region = client_config()["region"]
    try:
        found = s3profile.source(load_profiles(), profile_name(), region, top=True)
    except ConfigError as exc:
        raise _Failed(str(exc)) from None
    if found is not None:
        return found
    container = Container.from_env()
    if container is not None:
        return container
    if _env("AWS_EC2_METADATA_DISABLED").lower() == "true":
        return None
    return InstanceMetadata()

# -- the cache -----------------------------------------------------------------------------


class TemporaryCredentials:
    """The chain's credentials, cached and refreshed before they expire; thread-safe."""

    def __init__(self, source: Callable[[], Credentials] | None = None, name: str = "") -> None:
        self._source = source
        self._name = name
        self._lock = threading.Lock()
        self._creds: Credentials | None = None
        self._failure: tuple[float, str] | None = None  # (when, message) of the last failure
        self._fetched = 0.0  # time.monotonic() of the last fetch

    def _remembered(self) -> str | None:
        """The last failure's message while it is remembered."""
        failure = self._failure
        if failure is not None and time.monotonic() - failure[0] < FAILURE_MEMORY_S:
            return failure[1]
        return None

    def _fetch(self) -> Credentials:
        """Ask the source; caller holds the lock."""
        remembered = self._remembered()
        if remembered is not None:
            raise S3ApiError(remembered)
        self._fetched = time.monotonic()
        try:
            if self._source is None:
                self._source = _source()
                self._name = getattr(self._source, "name", "")
            if self._source is None:
                raise _Failed("no S3 credentials: none in the environment "
                              "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws, no web "
                              "identity or container credentials set up, and instance metadata "
                              "is disabled (AWS_EC2_METADATA_DISABLED)")
            creds = self._source()
            if creds.expires is not None and creds.expires <= time.time():
                raise _Failed("the credentials it gave expired at "
                              f"{_when(creds.expires)} (is this machine's clock right?)")
        except (_Failed, DsBackupError) as exc:
            text = str(exc)
            if not text.startswith("no S3 credentials"):
                text = (f"S3 credentials from {self._name}: {text}" if self._name
                        else f"S3 credentials: {text}")
            msg = scrub(text)
            self._failure = (time.monotonic(), msg)
            raise S3ApiError(msg) from None
        self._failure = None
        self._creds = creds
        log.debug("S3 credentials from %s, valid until %s", self._name, _when(creds.expires))
        return creds

    def __call__(self) -> Credentials:
        creds = self._creds
        left = None if creds is None or creds.expires is None else creds.expires - time.time()
        if creds is not None and (left is None or left > ADVISORY_REFRESH_S):
            return creds
        if creds is not None and left is not None and left > MANDATORY_REFRESH_S:
            # advisory: one thread refreshes, the others (and a failure) use the current ones
            if not self._lock.acquire(blocking=False):
                return creds
            try:
                if self._creds is creds and self._remembered() is None and (
                        time.monotonic() - self._fetched >= ADVISORY_RETRY_S):
                    self._fetch()  # (a failure: one warning per try)
            except S3ApiError as exc:
                log.warning("%s; using the current ones until %s", exc, _when(creds.expires))
            finally:
                self._lock.release()
            return self._creds or creds
        with self._lock:  # none yet, or about to expire: every caller waits for fresh ones
            now = self._creds
            if now is not None and now is not creds and (
                    now.expires is None or now.expires - time.time() > MANDATORY_REFRESH_S):
                return now
            return self._fetch()

    def obstore(self) -> dict[str, Any]:
        """The credentials as obstore's ``credential_provider`` wants them."""
        c = self()
        return {"access_key_id": c.access_key_id, "secret_access_key": c.secret_access_key,
                "token": c.session_token,
                "expires_at": None if c.expires is None else
                datetime.fromtimestamp(c.expires, timezone.utc)}


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_chain: TemporaryCredentials | None = None
_chain_lock = threading.Lock()


def chain() -> TemporaryCredentials:
    """The process's chain (one cache for every client); :func:`reset` forgets it."""
    global _chain
    with _chain_lock:
        if _chain is None:
            _chain = TemporaryCredentials()
        return _chain


def reset() -> None:
    """Forget the chain's source and credentials (the environment changed: tests)."""
    global _chain
    with _chain_lock:
        _chain = None


def static(cfg: dict[str, str]) -> Callable[[], Credentials] | None:
    """The keys of `cfg` (the environment's or ``~/.aws``'s) as a provider; None without."""
    if not (cfg.get("access_key_id") and cfg.get("secret_access_key")):
        return None
    creds = Credentials(cfg["access_key_id"], cfg["secret_access_key"],
                        cfg.get("session_token"))
    return lambda: creds
