"""The environment's role sources of the AWS chain (docs/STORAGE.md "Credentials from a
role"): STS web identity, container credentials (ECS, EKS Pod Identity), EC2 instance
metadata (IMDSv2 only); each a callable giving :class:`~dsbackup.storage.s3fetch.Credentials`
or raising ``_Failed``, cached by :mod:`dsbackup.storage.s3creds`."""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import urlencode, urlsplit

from dsbackup.storage.s3config import _loopback, register_secret
from dsbackup.storage.s3fetch import (
    Credentials,
    _attempts,
    _env,
    _Failed,
    _http,
    _json,
    _made,
    _number,
    service_endpoint,
    sts_credentials,
)

IMDS_DEFAULT = "http://169.254.169.254"
IMDS_DEFAULT_V6 = "http://[fd00:ec2::254]"
IMDS_TOKEN_TTL = "21600"
CONTAINER_HOST = "http://169.254.170.2"
# the hosts the SDKs accept in AWS_CONTAINER_CREDENTIALS_FULL_URI besides loopback addresses
# (ECS, EKS Pod Identity over IPv4 and IPv6)
CONTAINER_HOSTS = ("169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost")
CONTAINER_TIMEOUT_S, CONTAINER_ATTEMPTS = 2.0, 3  # botocore's
STS_TIMEOUT_S, STS_ATTEMPTS = 10.0, 3


class WebIdentity:
    def __init__(self, token_file: str, role_arn: str, session: str, region: str) -> None:
        self.token_file = token_file
        self.role_arn = role_arn
        self.session = session or f"dsbackup-{int(time.time() * 1000)}"
        self.endpoint = service_endpoint("STS", f"https://sts.{region}.amazonaws.com")
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
        return sts_credentials("AssumeRoleWithWebIdentity", status, data, "IDPCommunicationError")


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
