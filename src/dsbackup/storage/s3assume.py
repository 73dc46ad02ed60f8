"""A profile's role (``role_arn``): STS ``AssumeRole``, signed (SigV4, service ``sts``) with
the credentials of ``source_profile`` or ``credential_source`` (docs/STORAGE.md
"Credentials from a profile").

The request is a form POST to ``AWS_ENDPOINT_URL_STS``, ``AWS_ENDPOINT_URL`` or the
regional ``https://sts.REGION.amazonaws.com``, with the profile's ``external_id``,
``role_session_name`` (default ``dsbackup-<milliseconds>``) and ``duration_seconds``
(900 to 43200; none: STS's one hour). The source's credentials are asked for at each call,
so a chain of roles is assumed again from its start at every refresh. ``mfa_serial`` is
refused: a backup runs unattended and cannot ask for a code.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import urlencode, urlsplit

from dsbackup.errors import ConfigError
from dsbackup.storage.s3fetch import (
    Credentials,
    _attempts,
    _env,
    _Failed,
    _http,
    _made,
    service_endpoint,
    sts_credentials,
)
from dsbackup.storage.s3sign import authorization
from dsbackup.storage.s3sources import STS_ATTEMPTS, STS_TIMEOUT_S, Container, InstanceMetadata

CREDENTIAL_SOURCES = ("Environment", "Ec2InstanceMetadata", "EcsContainer")


def _environment() -> Credentials:
    key_id, secret = _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY")
    if not (key_id and secret):
        raise _Failed("credential_source Environment: AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY are not set")
    return _made(key_id, secret, _env("AWS_SESSION_TOKEN") or None, None, "the environment",
                 lasting=True)


def _container() -> Credentials:
    c = Container.from_env()
    if c is None:
        raise _Failed("credential_source EcsContainer: neither AWS_CONTAINER_CREDENTIALS_"
                      "RELATIVE_URI nor AWS_CONTAINER_CREDENTIALS_FULL_URI is set")
    return c()


def credential_source(name: str, where: str) -> Callable[[], Credentials]:
    """The source a profile's ``credential_source`` names."""
    if name == "Environment":
        return _environment
    if name == "Ec2InstanceMetadata":
        return InstanceMetadata()
    if name == "EcsContainer":
        return _container
    raise ConfigError(f"{where}: credential_source {name!r}: expected one of "
                      f"{', '.join(CREDENTIAL_SOURCES)}")


class AssumeRole:
    def __init__(self, role_arn: str, source: Callable[[], Credentials], source_name: str,
                 region: str, *, session: str = "", external_id: str = "",
                 duration: int | None = None, where: str = "") -> None:
        self.role_arn = role_arn
        self.source = source
        self.region = region
        self.session = session or f"dsbackup-{int(time.time() * 1000)}"
        self.external_id = external_id
        self.duration = duration
        self.endpoint = service_endpoint("STS", f"https://sts.{region}.amazonaws.com")
        self.name = (f"role {role_arn} ({where}, from {source_name}, STS {self.endpoint})")

    def __call__(self) -> Credentials:
        try:
            base = self.source()
        except _Failed as exc:
            raise _Failed(f"its source: {exc}", exc.retry) from None
        form = {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": self.role_arn,
                "RoleSessionName": self.session}
        if self.external_id:
            form["ExternalId"] = self.external_id
        if self.duration is not None:
            form["DurationSeconds"] = str(self.duration)
        body = urlencode(form).encode()
        return _attempts(lambda: self._once(body, base), STS_ATTEMPTS, 0.5)

    def _once(self, body: bytes, base: Credentials) -> Credentials:
        u = urlsplit(self.endpoint)
        amz_date = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        payload = hashlib.sha256(body).hexdigest()
        headers = {"host": u.netloc.rpartition("@")[2], "x-amz-date": amz_date,
                   "content-type": "application/x-www-form-urlencoded; charset=utf-8"}
        if base.session_token:
            headers["x-amz-security-token"] = base.session_token
        headers["Authorization"] = authorization("POST", (u.path or "") + "/", (), headers,
                                                 payload, base, self.region, amz_date, "sts")
        headers["Accept"] = "application/xml"
        status, data = _http("POST", self.endpoint + "/", headers, STS_TIMEOUT_S, body)
        return sts_credentials("AssumeRole", status, data, "Throttling")
