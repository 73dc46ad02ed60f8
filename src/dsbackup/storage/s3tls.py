"""TLS for the S3 clients (docs/STORAGE.md "https and private CAs"): the CA bundle of a
server behind a private CA, named as the AWS tools name it, ``AWS_CA_BUNDLE``, else
``ca_bundle`` in the profile's section of ``~/.aws/config``. Its certificates are added to the
system's trusted roots, for obstore (its ``root_certificate`` client option) and for our own
requests (:mod:`dsbackup.storage.s3api`, an ``ssl`` context). A bundle that cannot be read or
holds no valid PEM certificate is a :class:`~dsbackup.errors.ConfigError` (exit 2) naming it.
A server certificate that is rejected, or an https endpoint that does not speak TLS, is not
retried: one line naming the endpoint, exit 2 (``check_endpoint``, ``permanent``).
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from dsbackup.errors import ArchiveUnavailable, ConfigError
from dsbackup.storage.s3config import profile_config

PEM_CERT = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class CaBundle:
    path: str
    source: str  # where it was named: "AWS_CA_BUNDLE", "ca_bundle of profile P in FILE"
    pem: bytes


def ca_bundle_path() -> tuple[str, str] | None:
    """(path, where it was named), or None when no CA bundle is configured."""
    env = os.environ.get("AWS_CA_BUNDLE", "").strip()
    if env:
        return os.path.expanduser(env), "AWS_CA_BUNDLE"
    conf, where = profile_config()
    value = conf.get("ca_bundle", "").strip()
    if value:
        return os.path.expanduser(value), f"ca_bundle in {where}"
    return None


def ca_bundle() -> CaBundle | None:
    """The configured CA bundle, read and checked (every call reads the file again: a client
    is made once per bucket and process)."""
    named = ca_bundle_path()
    if named is None:
        return None
    path, source = named
    what = f"CA bundle {path} (from {source})"
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it: {exc.strerror or exc}") from None
    if PEM_CERT not in pem:
        raise ConfigError(f"{what}: no PEM certificate in it (expected '-----BEGIN "
                          "CERTIFICATE-----' blocks)")
    try:
        ssl.create_default_context().load_verify_locations(
            cadata=pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc).split(" (_ssl")[0]
        raise ConfigError(f"{what}: not a valid PEM certificate bundle ({reason})") from None
    return CaBundle(path, source, pem)


# a rejected server certificate, in words (rustls's names, for the obstore client's errors)
CERT_PROBLEMS = {
    "UnknownIssuer": "signed by a CA that is not trusted; for a private CA, name its "
                     "certificate in AWS_CA_BUNDLE",
    "BadSignature": "its signature does not verify",
    "Expired": "it has expired",
    "NotValidYet": "it is not valid yet (check the clock)",
    "NotValidForName": "it is not valid for the endpoint's host name",
    "Revoked": "it is revoked",
}
# OpenSSL's verify codes (X509_V_ERR_*) for the same, for our own requests' errors
_VERIFY_CODES = {2: "UnknownIssuer", 18: "UnknownIssuer", 19: "UnknownIssuer",
                 20: "UnknownIssuer", 21: "UnknownIssuer", 7: "BadSignature", 10: "Expired",
                 9: "NotValidYet", 62: "NotValidForName", 23: "Revoked"}


def tls_failure(exc: ssl.SSLError) -> str:
    """An ssl error of our own requests in the words the obstore client's get (s3.py)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        name = _VERIFY_CODES.get(getattr(exc, "verify_code", 0) or 0)
        why = CERT_PROBLEMS[name] if name else (getattr(exc, "verify_message", "") or
                                                 str(exc).split(" (_ssl")[0])
        return f"TLS: the server's certificate was rejected: {why}"
    reason = getattr(exc, "reason", None) or str(exc).split(" (_ssl")[0]
    plain = reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL")
    return f"TLS handshake failed: {reason}" + (" (is the endpoint really https?)"
                                                 if plain else "")


def ssl_context() -> ssl.SSLContext:
    """The system's trusted roots, plus the configured CA bundle's certificates."""
    ctx = ssl.create_default_context()
    bundle = ca_bundle()
    if bundle is not None:
        ctx.load_verify_locations(cadata=bundle.pem.decode("ascii", errors="replace"))
    return ctx


# handshake failures no retry can mend: the server's protocol (plain http on an https port,
# an old TLS version) or its certificate; an EOF or reset mid-handshake is transient
_PERMANENT = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL",
                        "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "PACKET_LENGTH_TOO_LONG",
                        "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "TLSV1_ALERT_PROTOCOL_VERSION",
                        "SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV1_ALERT_UNKNOWN_CA",
                        "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_UNRECOGNIZED_NAME",
                        "TLSV1_ALERT_INTERNAL_ERROR", "WRONG_SSL_VERSION"})
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_checked: set[tuple[str, int]] = set()  # endpoints whose handshake succeeded once


def permanent(exc: BaseException) -> bool:
    """Whether `exc` is a TLS failure that retrying cannot mend (fail at once)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    return isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None) in _PERMANENT


def tls_error(endpoint: str, exc: ssl.SSLError) -> ArchiveUnavailable:
    """The one line (exit 2) of a permanent TLS failure, naming the endpoint."""
    return ArchiveUnavailable(f"S3 endpoint {endpoint}: {tls_failure(exc)} (not retried)")


def check_endpoint(endpoint: str, host: str, port: int | None,
                   context: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
    """One TLS handshake with an https endpoint before its first request (once per process):
    a certificate it rejects or a server that does not speak TLS is an ArchiveUnavailable
    (exit 2) naming the endpoint at once, not after the clients' retry window. Anything
    else (refused, a timeout, an EOF) is left to the requests and their retries, and so is
    an endpoint reached through a proxy (``HTTPS_PROXY``: the client's way, not this one)."""
    key = (host, port or 443)
    if key in _checked or any(os.environ.get(v) for v in _PROXY_VARS):
        return
    try:
        with socket.create_connection(key, timeout=timeout) as sock, \
                (context or ssl_context()).wrap_socket(sock, server_hostname=host):
            pass
    except ssl.SSLError as exc:
        if permanent(exc):
            raise tls_error(endpoint, exc) from None
        return
    except OSError:
        return
    _checked.add(key)
