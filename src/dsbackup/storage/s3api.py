"""The S3 requests obstore does not offer: ListMultipartUploads, ListParts and
AbortMultipartUpload (the clean-up of stale uploads, :mod:`dsbackup.storage.s3stale`), and
multipart uploads whose completion is conditional (``If-None-Match: *``; obstore cannot send
it there, :mod:`dsbackup.storage.s3multipart`); and the signing and connections of the ranged
GETs read straight into the read cache's blocks (:mod:`dsbackup.storage.s3get`).

Requests are signed with AWS Signature Version 4 as AWS documents it for S3 ("Authenticating
Requests: Using the Authorization Header"): the canonical URI is the path as sent, each segment
URI-encoded once and never normalised; the canonical query sorts the encoded names and values
(a name without a value signs as ``name=``); header values are trimmed and inner runs of spaces
collapsed; the signing key is the HMAC-SHA256 chain over date, region, ``s3`` and
``aws4_request``. ``tests/storage/test_s3api.py`` checks it against the examples of that page.

Their bodies are empty, so the payload hash signed is always the empty string's SHA-256 (the
obstore client's ``UNSIGNED-PAYLOAD`` over https saves hashing its parts; there is nothing to
save here). The settings are exactly the obstore client's
(:func:`dsbackup.storage.s3config.client_config`: credentials, region, endpoint with path-style
addressing; AWS itself path-style as obstore does), its timeout and retries, and its trusted
CAs (:mod:`dsbackup.storage.s3tls`); without keys, both sign with a role's temporary
credentials from one cache (:mod:`dsbackup.storage.s3creds`), fetched at the first request. Nothing secret leaves this module: the Authorization
header, the secret key and the session token are never part of a message or an exception, and
every message from the server passes :func:`dsbackup.storage.s3config.scrub`.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit

from dsbackup.errors import ArchiveUnavailable, ConfigError, S3ApiError
from dsbackup.storage.s3config import client_config, scrub, settings
from dsbackup.storage.s3creds import Credentials, chain, static
from dsbackup.storage.s3sign import authorization, uri_encode
from dsbackup.storage.s3tls import permanent, ssl_context, tls_error

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_RESPONSE = 16 << 20  # a listing page of 1000 entries is well under 1 MiB
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    date: datetime  # the server's clock (its Date header), else ours
    etag: str = ""  # the ETag header (an uploaded part's)

    def xml(self) -> ET.Element:
        try:
            root = ET.fromstring(self.body)
        except ET.ParseError as exc:
            raise ArchiveUnavailable(f"the S3 server sent a response that is not XML ({exc})"
                                     ) from None
        for el in root.iter():  # drop the namespace: {http://s3.amazonaws.com/doc/...}Key
            el.tag = el.tag.rpartition("}")[2]
        return root


@dataclass(frozen=True)
class Upload:
    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class Part:
    number: int
    last_modified: datetime
    size: int


def _failed(message: str, status: int = 0, code: str = "") -> S3ApiError:
    """An S3ApiError whose message is scrubbed of credentials."""
    return S3ApiError(scrub(message), status, code)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as S3 writes it (``2026-12-06T18:00:00.000Z``), in UTC."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?",
                     text.strip())
    if not m:
        raise _failed(f"the S3 server sent an unreadable time {text[:40]!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    t = datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)
    off = m.group(8)
    if off and off != "Z":
        sign = 1 if off[0] == "+" else -1
        digits = off[1:].replace(":", "")
        t -= sign * (datetime(1, 1, 1, int(digits[:2]), int(digits[2:])) - datetime(1, 1, 1))
    return t


def _error_document(r: Response) -> bool:
    """Whether a 2xx answer is in fact an error (S3 may answer a long request such as
    CompleteMultipartUpload with 200 and an ``<Error>`` body)."""
    return r.body.lstrip()[:200].find(b"<Error>") >= 0


def _text(el: ET.Element, name: str, default: str = "") -> str:
    child = el.find(name)
    return child.text or "" if child is not None else default


def _int(el: ET.Element, name: str) -> int:
    text = _text(el, name, "0")
    try:
        return int(text)
    except ValueError:
        raise _failed(f"the S3 server sent an unreadable {name} {text[:40]!r}") from None


class S3Api:
    """Signed requests to one endpoint with the client's credentials, timeout and retries."""

    def __init__(self, cfg: dict[str, str], *, timeout_s: float = 60.0, retries: int = 5) -> None:
        # the keys of the environment or ~/.aws, else the AWS chain's temporary credentials
        # (s3creds.py: web identity, container, instance metadata), fetched at the first
        # request and refreshed before they expire
        self._creds = static(cfg) or chain()
        self.region = cfg.get("region") or "us-east-1"
        endpoint = cfg.get("endpoint") or f"https://s3.{self.region}.amazonaws.com"
        u = urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"S3 endpoint {endpoint!r} is not an http(s) URL")
        self.https = u.scheme == "https"
        self.netloc = u.netloc.rpartition("@")[2]
        self.hostname = u.hostname
        self.port = u.port
        self.base = u.path.rstrip("/")
        self.endpoint = f"{u.scheme}://{self.netloc}{self.base}"  # (no userinfo: messages)
        self.timeout_s = timeout_s
        self.retries = retries
        self._local = threading.local()  # each thread's kept-alive connection
        # the system's roots plus AWS_CA_BUNDLE's (s3tls.py), as the obstore client trusts
        self._ssl = ssl_context() if self.https else None
        # bodies signed as the obstore client signs them (s3config.sign_payload): over
        # plain http, or everywhere when asked
        self.sign_payload = cfg.get("unsigned_payload",
                                    "true" if self.https else "false") != "true"

    @property
    def creds(self) -> Credentials:
        """The credentials to sign with now (S3ApiError, one line, when none can be had)."""
        return self._creds()

    @classmethod
    def from_config(cls) -> S3Api:
        s = settings()
        return cls(client_config(), timeout_s=s.timeout_s, retries=s.retries)

    def path(self, bucket: str, key: str = "") -> str:
        """The encoded request path (path-style: /BUCKET/KEY)."""
        return uri_encode(f"{self.base}/{bucket}" + (f"/{key}" if key else ""), keep_slash=True)

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's connection, kept alive between requests (a part upload to AWS
        does not pay a TLS handshake each time)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(self.hostname, self.port,
                                               timeout=self.timeout_s, context=self._ssl)
        return http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout_s)

    def payload_hash(self, body: Sequence[bytes | memoryview]) -> str:
        """What ``x-amz-content-sha256`` carries: the body's SHA-256 over plain http (the
        signature then covers the bytes), ``UNSIGNED-PAYLOAD`` over https, where TLS
        protects them (as the AWS SDKs do), unless DSBACKUP_S3_SIGN_PAYLOAD=1."""
        if not self.sign_payload:
            return "UNSIGNED-PAYLOAD"
        h = hashlib.sha256()
        for piece in body:
            h.update(piece)
        return h.hexdigest()

    def signed_headers(self, method: str, path: str, params: Sequence[tuple[str, str]],
                       payload_sha256: str = EMPTY_SHA256,
                       extra: dict[str, str] | None = None) -> dict[str, str]:
        """A request's headers, `extra` (a Range ...) included, and its Authorization."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        creds = self.creds
        headers = {"host": self.netloc, "x-amz-date": amz_date,
                   "x-amz-content-sha256": payload_sha256}
        if creds.session_token:
            headers["x-amz-security-token"] = creds.session_token
        headers.update(extra or {})
        headers["Authorization"] = authorization(method, path, params, headers,
                                                 payload_sha256, creds, self.region,
                                                 amz_date)
        return headers

    def connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept-alive connection, and whether it was kept from an earlier
        request (the server may have closed it while idle)."""
        reused = getattr(self._local, "conn", None) is not None
        return self._connection(), reused

    def drop_connection(self) -> None:
        """Close this thread's connection (broken, half read, or closing)."""
        self._drop_connection()

    def _once(self, method: str, path: str, params: Sequence[tuple[str, str]],
              body: Sequence[bytes | memoryview] = (),
              extra: dict[str, str] | None = None) -> Response:
        sha = self.payload_hash(body) if body else EMPTY_SHA256
        headers = self.signed_headers(method, path, params, sha, extra)
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(sum(len(b) for b in body))
        query = "&".join(f"{uri_encode(k)}={uri_encode(v)}" if v else uri_encode(k)
                         for k, v in params)
        for fresh in (False, True):
            reused = getattr(self._local, "conn", None) is not None
            conn = self._connection()
            try:
                conn.request(method, f"{path}?{query}" if query else path,
                             body=iter(body) if body else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read(MAX_RESPONSE + 1)
                when = resp.getheader("Date")
                etag = resp.getheader("ETag") or ""
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop_connection()
                if fresh or not reused:
                    raise
                # the server closed the kept-alive connection while it was idle: once more
            except BaseException:
                self._drop_connection()  # a broken or half-read connection is not reused
                raise
        if len(data) > MAX_RESPONSE or resp.will_close or not resp.isclosed():
            self._drop_connection()
        if len(data) > MAX_RESPONSE:
            raise _failed(f"{method} response over {MAX_RESPONSE} bytes")
        try:
            date = parsedate_to_datetime(when) if when else datetime.now(timezone.utc)
        except (TypeError, ValueError):
            date = datetime.now(timezone.utc)
        return Response(resp.status, data, date.astimezone(timezone.utc), etag)

    def request(self, method: str, bucket: str, key: str = "",
                params: Sequence[tuple[str, str]] = (),
                body: Sequence[bytes | memoryview] = (),
                headers: dict[str, str] | None = None) -> Response:
        """One request, retried with backoff on connection errors and 5xx/429 answers (and a
        200 whose body is an S3 error document, as CompleteMultipartUpload may send) within
        the retry window; any other status but 2xx is an S3ApiError with the server's code.
        ``body`` is sent as it is, piece by piece (no joined copy)."""
        what = f"{method} s3://{bucket}/{key}" + (f" ({params[0][0]})" if params else "")
        path = self.path(bucket, key)
        deadline = time.monotonic() + self.timeout_s
        delay = 0.1
        for attempt in range(self.retries + 1):
            last = attempt == self.retries or time.monotonic() + delay > deadline
            try:
                r = self._once(method, path, params, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                if permanent(exc):  # a rejected certificate, not TLS: no retry mends it
                    raise tls_error(self.endpoint, exc) from None  # type: ignore[arg-type]
                if last:
                    raise _failed(f"{what} failed: {type(exc).__name__}: {exc}") from None
            else:
                if 200 <= r.status < 300 and not _error_document(r):
                    return r
                retryable = r.status >= 500 or r.status == 429 or 200 <= r.status < 300
                if not retryable or last:
                    code, msg = self._error(r)
                    raise _failed(f"{what} failed: HTTP {r.status} {code}"
                                  + (f": {msg}" if msg else ""), r.status, code)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    @staticmethod
    def _error(r: Response) -> tuple[str, str]:
        """The error's Code and Message (never the rest: AWS echoes the string it signed)."""
        try:
            root = r.xml()
        except ArchiveUnavailable:
            return "", ""
        return _text(root, "Code"), _text(root, "Message")[:200]

    def list_multipart_uploads(self, bucket: str, prefix: str,
                               ) -> Iterator[tuple[Upload, datetime]]:
        """The unfinished uploads whose key starts with `prefix` and has no further ``/``
        (servers that ignore the delimiter list deeper ones too), all pages, each with the
        server's time of the page that listed it."""
        key_marker = id_marker = ""
        while True:
            # delimiter: uploads in sub-prefixes come back as one CommonPrefixes entry each
            params = [("uploads", ""), ("prefix", prefix), ("delimiter", "/"),
                      ("encoding-type", "url")]
            if key_marker:
                params += [("key-marker", key_marker), ("upload-id-marker", id_marker)]
            r = self.request("GET", bucket, "", params)
            root = r.xml()
            encoded = _text(root, "EncodingType") == "url"

            def dec(s: str, encoded: bool = encoded) -> str:
                return unquote(s) if encoded else s

            for el in root.findall("Upload"):
                yield Upload(dec(_text(el, "Key")), _text(el, "UploadId"),
                             parse_time(_text(el, "Initiated"))), r.date
            if _text(root, "IsTruncated").lower() != "true":
                return
            nk, ni = dec(_text(root, "NextKeyMarker")), _text(root, "NextUploadIdMarker")
            if not nk or (nk, ni) == (key_marker, id_marker):
                raise _failed(f"ListMultipartUploads of s3://{bucket}/{prefix}: the server "
                              "said there is more but gave no new marker")
            key_marker, id_marker = nk, ni

    def list_parts(self, bucket: str, key: str, upload_id: str) -> Iterator[Part]:
        marker = ""
        while True:
            params = [("uploadId", upload_id)]
            if marker:
                params.append(("part-number-marker", marker))
            root = self.request("GET", bucket, key, params).xml()
            for el in root.findall("Part"):
                yield Part(_int(el, "PartNumber"), parse_time(_text(el, "LastModified")),
                           _int(el, "Size"))
            if _text(root, "IsTruncated").lower() != "true":
                return
            nxt = _text(root, "NextPartNumberMarker")
            if not nxt or nxt == marker:
                raise _failed(f"ListParts of s3://{bucket}/{key}: the server said there is "
                              "more but gave no new marker")
            marker = nxt

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> bool:
        """Abort the upload; False when it was already gone (finished or aborted)."""
        try:
            self.request("DELETE", bucket, key, [("uploadId", upload_id)])
        except S3ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create_multipart_upload(self, bucket: str, key: str) -> str:
        """Start a multipart upload; its upload id."""
        root = self.request("POST", bucket, key, [("uploads", "")]).xml()
        upload_id = _text(root, "UploadId")
        if not upload_id:
            raise _failed(f"CreateMultipartUpload of s3://{bucket}/{key}: the server gave no "
                          "upload id")
        return upload_id

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int,
                    body: Sequence[bytes | memoryview]) -> str:
        """Send part `number` (its pieces, in order); the part's ETag."""
        r = self.request("PUT", bucket, key,
                         [("partNumber", str(number)), ("uploadId", upload_id)], body)
        if not r.etag:
            raise _failed(f"UploadPart {number} of s3://{bucket}/{key}: the server gave no "
                          "ETag")
        return r.etag

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                  etags: Sequence[str], *, if_none_match: bool) -> None:
        """Join the parts (numbered from 1, in order) into the object. With `if_none_match`
        the server refuses (412, S3ApiError) to replace an existing object."""
        doc = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(e)}</ETag></Part>"
                      for n, e in enumerate(etags, 1))
        body = ("<CompleteMultipartUpload>" + doc + "</CompleteMultipartUpload>").encode()
        self.request("POST", bucket, key, [("uploadId", upload_id)], [body],
                     {"If-None-Match": "*"} if if_none_match else None)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def multipart_etag(part_etags: Sequence[str]) -> str:
    """The ETag S3 gives an object completed from parts with these ETags (each the part's
    MD5): the MD5 of the parts' binary MD5s, ``-`` and the part count; "" when a part's
    ETag is not an MD5 (servers may use other ETags: then nothing can be compared)."""
    digests = []
    for e in part_etags:
        e = e.strip().strip('"')
        if not re.fullmatch(r"[0-9a-fA-F]{32}", e):
            return ""
        digests.append(bytes.fromhex(e))
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"
