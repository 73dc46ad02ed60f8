"""A profile's IAM Identity Center (SSO) role: ``sso_account_id`` and ``sso_role_name`` with
an ``sso_session`` (its ``[sso-session NAME]`` section: ``sso_start_url``, ``sso_region``) or,
the legacy form, ``sso_start_url`` and ``sso_region`` in the profile (docs/STORAGE.md
"Credentials from a profile").

dsbackup never logs in (a backup cannot open a browser): it reads the token that ``aws sso
login`` left in ``~/.aws/sso/cache/<SHA-1 of the session name, or of the start URL>.json``
(``accessToken``, ``expiresAt``), again at each refresh, and exchanges it for the role's
credentials with the portal's ``GetRoleCredentials`` (``GET /federation/credentials``,
header ``x-amz-sso_bearer_token``) at ``AWS_ENDPOINT_URL_SSO`` or
``https://portal.sso.REGION.amazonaws.com``. A token of an ``sso-session`` that is about to
expire (15 minutes) is refreshed, as the AWS CLI and SDKs do, with its ``refreshToken`` at the
OIDC service's ``CreateToken`` (``AWS_ENDPOINT_URL_SSO_OIDC`` or
``https://oidc.REGION.amazonaws.com``) and written back to the cache. A missing, expired or
refused token is one line saying to run ``aws sso login``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from dsbackup.errors import ConfigError
from dsbackup.storage.s3config import register_secret
from dsbackup.storage.s3fetch import (
    Credentials,
    _expiry,
    _Failed,
    _http,
    _json,
    _made,
    service_endpoint,
)

if TYPE_CHECKING:
    from dsbackup.storage.s3files import Profiles

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
TOKEN_REFRESH_S = 15 * 60  # a token this close to its expiry is refreshed (botocore's)


def cache_file(key: str) -> Path:
    """Where the AWS CLI keeps the token of a session name or a start URL."""
    return (Path.home() / ".aws" / "sso" / "cache"
            / (hashlib.sha1(key.encode("utf-8")).hexdigest() + ".json"))


class Sso:
    def __init__(self, *, start_url: str, region: str, account: str, role: str,
                 session: str, profile: str, where: str) -> None:
        self.start_url, self.region, self.account, self.role = start_url, region, account, role
        self.session = session  # "": the legacy form (no refresh)
        self.login = f"run: aws sso login --profile {profile}"
        self.cache = cache_file(session or start_url)
        self.portal = service_endpoint("SSO", f"https://portal.sso.{region}.amazonaws.com")
        self.name = f"SSO role {role} of account {account} ({where}, {self.portal})"

    @classmethod
    def from_profile(cls, profiles: Profiles, name: str, values: dict[str, str]) -> Sso:
        where = profiles.where(name)
        settings = dict(values)
        session = values.get("sso_session", "")
        if session:
            section = profiles.sessions.get(session)
            if section is None:
                raise ConfigError(f"{where}: sso_session {session!r} has no "
                                  f"[sso-session {session}] section in {profiles.conf_file}")
            for k in ("sso_start_url", "sso_region"):
                if values.get(k) and section.get(k) and values[k] != section[k]:
                    raise ConfigError(f"{where}: {k} differs from the one of sso-session "
                                      f"{session}")
                settings[k] = section.get(k) or values.get(k, "")
        missing = [k for k in ("sso_start_url", "sso_region", "sso_account_id",
                               "sso_role_name") if not settings.get(k)]
        if missing:
            raise ConfigError(f"{where} is set up for SSO but lacks {', '.join(missing)}")
        return cls(start_url=settings["sso_start_url"], region=settings["sso_region"],
                   account=settings["sso_account_id"], role=settings["sso_role_name"],
                   session=session, profile=name, where=where)

    def _token(self) -> str:
        try:
            doc = _json(self.cache.read_bytes(), "the SSO token cache")
        except FileNotFoundError:
            raise _Failed(f"no SSO token in {self.cache} (not logged in); "
                          f"{self.login}") from None
        except OSError as exc:
            raise _Failed(f"cannot read the SSO token {self.cache}: "
                          f"{exc.strerror or exc}") from None
        except _Failed as exc:
            raise _Failed(f"{self.cache}: {exc}; {self.login}") from None
        for k in ("accessToken", "refreshToken", "clientSecret"):
            register_secret(doc.get(k) if isinstance(doc.get(k), str) else None)
        token = doc.get("accessToken")
        if not isinstance(token, str) or not token:
            raise _Failed(f"the SSO token in {self.cache} has no accessToken; {self.login}")
        try:
            expires = _expiry(doc.get("expiresAt"), "the SSO token cache")
        except _Failed as exc:
            raise _Failed(f"{exc}; {self.login}") from None
        if expires - time.time() < TOKEN_REFRESH_S and self.session:
            try:
                return self._refresh(doc)
            except _Failed as exc:
                if expires <= time.time():
                    raise _Failed(f"the SSO token expired at {_iso(expires)} and could not "
                                  f"be refreshed ({exc}); {self.login}") from None
        if expires <= time.time():
            raise _Failed(f"the SSO token expired at {_iso(expires)}; {self.login}")
        return token

    def _refresh(self, doc: dict[str, Any]) -> str:
        """A new access token from the refresh token, written back to the cache."""
        fields = [doc.get(k) for k in ("refreshToken", "clientId", "clientSecret")]
        if not all(isinstance(f, str) and f for f in fields):
            raise _Failed("no refresh token in the cache")
        reg = doc.get("registrationExpiresAt")
        if isinstance(reg, str) and _expiry(reg, "the SSO token cache") <= time.time():
            raise _Failed("the client registration expired")
        oidc = service_endpoint("SSO_OIDC", f"https://oidc.{self.region}.amazonaws.com")
        body = json.dumps({"grantType": "refresh_token", "clientId": fields[1],
                           "clientSecret": fields[2], "refreshToken": fields[0]}).encode()
        status, data = _http("POST", oidc + "/token", {"Content-Type": "application/json"},
                             TIMEOUT_S, body)
        if status != 200:
            raise _Failed(f"CreateToken answered HTTP {status}{_error(data)}")
        answer = _json(data, "CreateToken")
        token, life = answer.get("accessToken"), answer.get("expiresIn")
        register_secret(token if isinstance(token, str) else None)
        register_secret(answer.get("refreshToken") if isinstance(answer.get("refreshToken"),
                                                                  str) else None)
        if not (isinstance(token, str) and token and isinstance(life, int) and life > 0):
            raise _Failed("CreateToken answered without accessToken or expiresIn")
        new = dict(doc, accessToken=token,
                   expiresAt=_iso(time.time() + life, z=True))
        if isinstance(answer.get("refreshToken"), str):
            new["refreshToken"] = answer["refreshToken"]
        try:
            _write(self.cache, new)
        except _Failed as exc:  # the token works; `aws sso login` will be needed later
            log.warning("%s", exc)
        return token

    def __call__(self) -> Credentials:
        token = self._token()
        url = (f"{self.portal}/federation/credentials?"
               + urlencode({"account_id": self.account, "role_name": self.role}))
        status, data = _http("GET", url, {"x-amz-sso_bearer_token": token,
                                          "Accept": "application/json"}, TIMEOUT_S)
        if status == 401:
            raise _Failed(f"the portal refused the SSO token (expired or revoked: HTTP 401"
                          f"{_error(data)}); {self.login}")
        if status != 200:
            raise _Failed(f"GetRoleCredentials answered HTTP {status}{_error(data)}",
                          status >= 500 or status == 429)
        role = _json(data, "GetRoleCredentials").get("roleCredentials")
        if not isinstance(role, dict):
            raise _Failed("GetRoleCredentials answered without roleCredentials")
        ms = role.get("expiration")
        when = _iso(ms / 1000, z=True) if isinstance(ms, (int, float)) else None
        return _made(role.get("accessKeyId"), role.get("secretAccessKey"),
                     role.get("sessionToken"), when, "GetRoleCredentials")


def _iso(t: float, z: bool = False) -> str:
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%SZ") if z else d.strftime("%Y-%m-%d %H:%M:%S UTC")


def _error(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    text = " ".join(str(doc.get(k, "")) for k in ("error", "__type", "message", "Message")
                    if doc.get(k))
    return f": {text[:200]}" if text else ""


def _write(path: Path, doc: dict[str, Any]) -> None:
    """The cache file replaced whole (a reader never sees half of it), mode 0600."""
    fd, tmp = tempfile.mkstemp(prefix=".dsbackup-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _Failed(f"cannot write the refreshed token to {path}: "
                      f"{exc.strerror or exc}") from None


