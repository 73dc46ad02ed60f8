"""Credentials for every S3 request, ours (:mod:`dsbackup.storage.s3api`) and obstore's
(docs/STORAGE.md "S3: endpoint, region, credentials").

Keys from the environment or ``~/.aws`` (:func:`dsbackup.storage.s3config.client_config`)
are used as they are. Without them, the standard AWS chain, in the order the AWS SDKs
(botocore) document, supplies temporary credentials:

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

import http.client
import ipaddress
import json
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit

from dsbackup.errors import DsBackupError, S3ApiError
from dsbackup.storage.s3config import (
    _loopback,
    client_config,
    profile_config,
    register_secret,
    scrub,
)

log = logging.getLogger(__name__)

ADVISORY_REFRESH_S = 15 * 60  # refresh this long before expiry, keeping the old on failure
MANDATORY_REFRESH_S = 10 * 60  # within this, every caller waits for fresh credentials
FAILURE_MEMORY_S = 10.0  # a failed fetch is answered from memory this long
# an advisory refresh is tried at most this often (a source that hands out the same
# credentials until shortly before they expire is not asked again at every request)
ADVISORY_RETRY_S = 30.0
IMDS_DEFAULT = "http://169.254.169.254"
IMDS_DEFAULT_V6 = "http://[fd00:ec2::254]"
IMDS_TOKEN_TTL = "21600"
CONTAINER_HOST = "http://169.254.170.2"
# the hosts the SDKs accept in AWS_CONTAINER_CREDENTIALS_FULL_URI besides loopback addresses
# (ECS, EKS Pod Identity over IPv4 and IPv6)
CONTAINER_HOSTS = ("169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost")
CONTAINER_TIMEOUT_S, CONTAINER_ATTEMPTS = 2.0, 3  # botocore's
STS_TIMEOUT_S, STS_ATTEMPTS = 10.0, 3
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires: float | None = None  # seconds since the epoch; None: static keys


class _Failed(Exception):
    """A source's request failed: `why` in words; `retry` whether another attempt may help."""

    def __init__(self, why: str, retry: bool = False) -> None:
        super().__init__(why)
        self.retry = retry


def _env(name: str) -> str:
    return (os.environ.get(name) or "").strip()


def _http(method: str, url: str, headers: dict[str, str], timeout: float,
          body: bytes | None = None) -> tuple[int, bytes]:
    """One request: (status, body). _Failed (retry) when the connection fails."""
    u = urlsplit(url)
    if u.scheme == "https":
        from dsbackup.storage.s3tls import ssl_context

        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            u.hostname or "", u.port, timeout=timeout, context=ssl_context())
    else:
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=timeout)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read(MAX_BODY + 1)
        return resp.status, data[:MAX_BODY]
    except TimeoutError:
        raise _Failed(f"no answer within {timeout:g} s", True) from None
    except (OSError, http.client.HTTPException) as exc:
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise _Failed(f"{type(exc).__name__}: {text}", True) from None
    finally:
        conn.close()


def _expiry(text: Any, source: str) -> float:
    if not isinstance(text, str) or not text.strip():
        raise _Failed(f"{source} gave no Expiration")
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _Failed(f"{source} gave an unreadable Expiration {text[:40]!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def _made(key_id: Any, secret: Any, token: Any, expiration: Any, source: str) -> Credentials:
    """Checked credentials, every secret registered for scrubbing before anything else."""
    for s in (secret, token, key_id):
        register_secret(s if isinstance(s, str) else None)
    if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
        raise _Failed(f"{source} gave no AccessKeyId or SecretAccessKey")
    if token is not None and not isinstance(token, str):
        raise _Failed(f"{source} gave an unreadable session token")
    return Credentials(key_id, secret, token or None, _expiry(expiration, source))


def _attempts(fetch: Callable[[], Credentials], attempts: int, pause: float) -> Credentials:
    for i in range(attempts):
        try:
            return fetch()
        except _Failed as exc:
            if not exc.retry or i == attempts - 1:
                raise
        time.sleep(pause)
    raise AssertionError("unreachable")


# -- the sources ---------------------------------------------------------------------------


class WebIdentity:
    def __init__(self, token_file: str, role_arn: str, session: str, region: str) -> None:
        self.token_file = token_file
        self.role_arn = role_arn
        self.session = session or f"dsbackup-{int(time.time() * 1000)}"
        endpoint = (_env("AWS_ENDPOINT_URL_STS") or _env("AWS_ENDPOINT_URL")
                    or f"https://sts.{region}.amazonaws.com")
        u = urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise _Failed(f"STS endpoint {endpoint!r} is not an http(s) URL")
        if u.scheme == "http" and not _loopback(u.hostname):
            raise _Failed(f"STS endpoint {endpoint!r}: plain http is refused except on the "
                          "loopback address (the token would cross the network unencrypted)")
        self.endpoint = endpoint.rstrip("/")
        self.name = f"web identity (AWS_WEB_IDENTITY_TOKEN_FILE {token_file}, STS {self.endpoint})"

    def __call__(self) -> Credentials:
        try:
            with open(self.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise _Failed(f"cannot read the token file: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise _Failed("the token file is not text") from None
        if not token:
            raise _Failed("the token file is empty")
        register_secret(token)
        body = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                          "RoleArn": self.role_arn, "RoleSessionName": self.session,
                          "WebIdentityToken": token}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                   "Accept": "application/xml"}
        return _attempts(lambda: self._once(body, headers), STS_ATTEMPTS, 0.5)

    def _once(self, body: bytes, headers: dict[str, str]) -> Credentials:
        status, data = _http("POST", self.endpoint + "/", headers, STS_TIMEOUT_S, body)
        root = _xml(data)
        if status != 200:
            code = _find(root, "Code") if root is not None else ""
            msg = _find(root, "Message")[:200] if root is not None else ""
            retry = status >= 500 or status == 429 or code == "IDPCommunicationError"
            raise _Failed(f"AssumeRoleWithWebIdentity answered HTTP {status} {code}".rstrip()
                          + (f": {msg}" if msg else ""), retry)
        if root is None:
            raise _Failed("AssumeRoleWithWebIdentity answered something that is not XML")
        creds = root.find(".//Credentials")
        if creds is None:
            raise _Failed("AssumeRoleWithWebIdentity answered without Credentials")
        return _made(_find(creds, "AccessKeyId"), _find(creds, "SecretAccessKey"),
                     _find(creds, "SessionToken"), _find(creds, "Expiration"), "STS")


def _xml(data: bytes) -> ET.Element | None:
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None
    for el in root.iter():
        el.tag = el.tag.rpartition("}")[2]
    return root


def _find(root: ET.Element | None, name: str) -> str:
    el = root.find(f".//{name}") if root is not None else None
    return (el.text or "").strip() if el is not None else ""


class Container:
    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"container credentials ({url})"

    @staticmethod
    def from_env() -> Container | None:
        rel, full = (_env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
                     _env("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
        if rel:
            return Container(CONTAINER_HOST + ("" if rel.startswith("/") else "/") + rel)
        if not full:
            return None
        u = urlsplit(full)
        host = u.hostname or ""
        if u.scheme not in ("http", "https") or not host:
            raise _Failed(f"AWS_CONTAINER_CREDENTIALS_FULL_URI {full!r} is not an http(s) URL")
        if not (_loopback(host) or host in CONTAINER_HOSTS or _same_ip(host)):
            raise _Failed(f"AWS_CONTAINER_CREDENTIALS_FULL_URI {full!r}: the host must be a "
                          f"loopback address or one of {', '.join(CONTAINER_HOSTS)}")
        return Container(full)

    def _headers(self) -> dict[str, str]:
        token_file = _env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        if token_file:
            try:
                with open(token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as exc:
                raise _Failed(f"cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE "
                              f"{token_file}: {exc.strerror or exc}") from None
        else:
            token = _env("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        headers = {"Accept": "application/json"}
        if token:
            register_secret(token)
            if "\r" in token or "\n" in token:
                raise _Failed("the container authorization token holds a line break")
            headers["Authorization"] = token
        return headers

    def __call__(self) -> Credentials:
        headers = self._headers()
        return _attempts(lambda: self._once(headers), CONTAINER_ATTEMPTS, 1.0)

    def _once(self, headers: dict[str, str]) -> Credentials:
        status, data = _http("GET", self.url, headers, CONTAINER_TIMEOUT_S)
        if status != 200:
            raise _Failed(f"HTTP {status}", status >= 500 or status == 429)
        doc = _json(data, "the container credentials service")
        return _made(doc.get("AccessKeyId"), doc.get("SecretAccessKey"), doc.get("Token"),
                     doc.get("Expiration"), "the container credentials service")


def _same_ip(host: str) -> bool:
    """An IPv6 host written another way than in CONTAINER_HOSTS (fd00:ec2:0::23)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip == ipaddress.ip_address(h) for h in CONTAINER_HOSTS if h != "localhost")


def _json(data: bytes, who: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _Failed(f"{who} answered something that is not JSON") from None
    if not isinstance(doc, dict):
        raise _Failed(f"{who} answered JSON that is not an object")
    return doc


class InstanceMetadata:
    def __init__(self) -> None:
        base = _env("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        if not base:
            v6 = _env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE").lower() == "ipv6"
            base = IMDS_DEFAULT_V6 if v6 else IMDS_DEFAULT
        self.base = base.rstrip("/")
        self.timeout = _number("AWS_METADATA_SERVICE_TIMEOUT", 1.0)
        self.attempts = int(_number("AWS_METADATA_SERVICE_NUM_ATTEMPTS", 1))
        self.name = f"instance metadata (IMDSv2 at {self.base})"

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        for i in range(self.attempts):
            try:
                return _http(method, self.base + path, headers, self.timeout)
            except _Failed:
                if i == self.attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def __call__(self) -> Credentials:
        try:
            status, token = self._request("PUT", "/latest/api/token",
                                          {"x-aws-ec2-metadata-token-ttl-seconds":
                                           IMDS_TOKEN_TTL})
        except _Failed as exc:
            raise _Failed(f"{exc} (not on EC2? inside a container on EC2 the instance's "
                          "metadata hop limit must be 2 or more for IMDSv2)") from None
        if status in (403, 404, 405):  # no IMDSv2 here (or the service is turned off)
            raise _Failed(f"the session token request (IMDSv2) was answered HTTP {status}; "
                          "dsbackup does not fall back to IMDSv1: enable IMDSv2 on the "
                          "instance (HttpTokens optional or required)")
        if status != 200 or not token.strip():
            raise _Failed(f"the session token request (IMDSv2) was answered HTTP {status}")
        session = token.decode("ascii", "replace").strip()
        register_secret(session)
        headers = {"x-aws-ec2-metadata-token": session}
        path = "/latest/meta-data/iam/security-credentials/"
        status, names = self._request("GET", path, headers)
        if status == 404:
            raise _Failed("the instance has no IAM role (instance profile) attached")
        if status != 200:
            raise _Failed(f"the role's name was answered HTTP {status}")
        role = names.decode("utf-8", "replace").strip().splitlines()
        if not role or not role[0].strip():
            raise _Failed("the instance has no IAM role (instance profile) attached")
        status, data = self._request("GET", path + role[0].strip(), headers)
        if status != 200:
            raise _Failed(f"the credentials of role {role[0].strip()!r} were answered "
                          f"HTTP {status}")
        doc = _json(data, "the instance metadata service")
        if doc.get("Code", "Success") != "Success":
            raise _Failed(f"the credentials of role {role[0].strip()!r}: "
                          f"{str(doc.get('Code'))[:80]} {str(doc.get('Message', ''))[:120]}"
                          .rstrip())
        return _made(doc.get("AccessKeyId"), doc.get("SecretAccessKey"), doc.get("Token"),
                     doc.get("Expiration"), "the instance metadata service")


def _number(name: str, default: float) -> float:
    raw = _env(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise _Failed(f"{name}={raw!r}: expected a positive number")
    return value


def _source() -> Callable[[], Credentials] | None:
    """The chain's source for this environment (None: instance metadata is disabled and
    nothing else is set up); _Failed when a source's settings are wrong."""
    conf, _ = profile_config()
    token_file = _env("AWS_WEB_IDENTITY_TOKEN_FILE") or conf.get("web_identity_token_file", "")
    role_arn = _env("AWS_ROLE_ARN") or conf.get("role_arn", "")
    if token_file:
        if not role_arn:
            raise _Failed("web identity: AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN "
                          "is not")
        region = client_config()["region"]
        return WebIdentity(token_file, role_arn, _env("AWS_ROLE_SESSION_NAME")
                           or conf.get("role_session_name", ""), region)
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
