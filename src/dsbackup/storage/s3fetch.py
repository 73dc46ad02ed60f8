"""What every credential source shares (docs/STORAGE.md "Credentials from a role",
"Credentials from a profile"): the credentials, a source's failure, one HTTP request with a
timeout, the checks of an answer (its expiry, its JSON or XML) and the endpoint of an AWS
service. Every secret is registered with :func:`~dsbackup.storage.s3config.register_secret`
before it can reach a message."""

from __future__ import annotations

import http.client
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from dsbackup.storage.s3config import _loopback, register_secret

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


def _made(key_id: Any, secret: Any, token: Any, expiration: Any, source: str, *,
          lasting: bool = False) -> Credentials:
    """Checked credentials, every secret registered for scrubbing before anything else;
    `lasting`: without an expiration they are kept for the whole run."""
    for s in (secret, token, key_id):
        register_secret(s if isinstance(s, str) else None)
    if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
        raise _Failed(f"{source} gave no AccessKeyId or SecretAccessKey")
    if token is not None and not isinstance(token, str):
        raise _Failed(f"{source} gave an unreadable session token")
    expires = None if lasting and expiration is None else _expiry(expiration, source)
    return Credentials(key_id, secret, token or None, expires)


def _attempts(fetch: Callable[[], Credentials], attempts: int, pause: float) -> Credentials:
    for i in range(attempts):
        try:
            return fetch()
        except _Failed as exc:
            if not exc.retry or i == attempts - 1:
                raise
        time.sleep(pause)
    raise AssertionError("unreachable")


def service_endpoint(service: str, default: str) -> str:
    """``AWS_ENDPOINT_URL_<SERVICE>``, else ``AWS_ENDPOINT_URL``, else `default` (AWS's);
    plain http only on the loopback address (a token or a signature would cross the network
    unencrypted)."""
    endpoint = (_env(f"AWS_ENDPOINT_URL_{service.upper()}") or _env("AWS_ENDPOINT_URL")
                or default)
    u = urlsplit(endpoint)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise _Failed(f"{service} endpoint {endpoint!r} is not an http(s) URL")
    if u.scheme == "http" and not _loopback(u.hostname):
        raise _Failed(f"{service} endpoint {endpoint!r}: plain http is refused except on the "
                      "loopback address (the token would cross the network unencrypted)")
    return endpoint.rstrip("/")


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


def sts_credentials(action: str, status: int, data: bytes, retry_code: str) -> Credentials:
    """The Credentials of an STS answer to `action` (AssumeRole, AssumeRoleWithWebIdentity),
    or _Failed: retried on 5xx, 429 and the error code `retry_code`."""
    root = _xml(data)
    if status != 200:
        code = _find(root, "Code") if root is not None else ""
        msg = _find(root, "Message")[:200] if root is not None else ""
        retry = status >= 500 or status == 429 or code == retry_code
        raise _Failed(f"{action} answered HTTP {status} {code}".rstrip()
                      + (f": {msg}" if msg else ""), retry)
    if root is None:
        raise _Failed(f"{action} answered something that is not XML")
    creds = root.find(".//Credentials")
    if creds is None:
        raise _Failed(f"{action} answered without Credentials")
    return _made(_find(creds, "AccessKeyId"), _find(creds, "SecretAccessKey"),
                 _find(creds, "SessionToken"), _find(creds, "Expiration"), "STS")


def _json(data: bytes, who: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _Failed(f"{who} answered something that is not JSON") from None
    if not isinstance(doc, dict):
        raise _Failed(f"{who} answered JSON that is not an object")
    return doc


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
