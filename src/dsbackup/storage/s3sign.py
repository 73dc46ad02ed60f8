"""AWS Signature Version 4 (docs/STORAGE.md "https, payload signing and private CAs"): the
canonical request of every signed request, S3's (:mod:`dsbackup.storage.s3api`) and STS's
(:mod:`dsbackup.storage.s3assume`); stdlib ``hmac``/``hashlib``, checked against AWS's
documented examples (tests/storage/test_s3api.py)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from dsbackup.storage.s3fetch import Credentials

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """AWS's URI encoding: every byte but A-Z a-z 0-9 - . _ ~ as %XX (upper-case hex)."""
    return "".join(chr(b) if b in _UNRESERVED or (keep_slash and b == 0x2F) else f"%{b:02X}"
                   for b in text.encode("utf-8"))


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v))
                                                    for k, v in params))


def signing_key(secret: str, datestamp: str, region: str, service: str = "s3") -> bytes:
    k = hmac.new(b"AWS4" + secret.encode(), datestamp.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def authorization(method: str, path: str, params: Sequence[tuple[str, str]],
                  headers: dict[str, str], payload_sha256: str, creds: Credentials,
                  region: str, amz_date: str, service: str = "s3") -> str:
    """The Authorization header value for a request whose `headers` (all of them signed)
    already hold ``host`` and ``x-amz-date``; `path` is the encoded path as sent."""
    canon = {k.lower(): " ".join(v.strip().split()) for k, v in headers.items()}
    names = sorted(canon)
    signed = ";".join(names)
    creq = "\n".join([method, path, canonical_query(params),
                      "".join(f"{n}:{canon[n]}\n" for n in names), signed, payload_sha256])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
    key = signing_key(creds.secret_access_key, amz_date[:8], region, service)
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope},"
            f"SignedHeaders={signed},Signature={sig}")
