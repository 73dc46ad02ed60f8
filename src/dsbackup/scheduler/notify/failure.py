"""Notification errors whose messages are built only from known-safe parts.

A notifier never lets a library's exception text out: that text may quote a URL path, a header
value or a server reply that contains a secret. :func:`describe` turns any exception into a
short description from its type, errno name or status code only.
"""

from __future__ import annotations

import errno
import socket
import ssl


class NotificationFailure(Exception):
    """A notification was not delivered. The message holds no secret (see :func:`describe`)."""


def describe(exc: BaseException) -> str:
    """A safe one-line description of ``exc``: its kind, never its library text."""
    if isinstance(exc, NotificationFailure):
        return str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({type(exc).__name__})"
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if isinstance(exc, OSError):
        code = errno.errorcode.get(exc.errno or 0)
        return f"{type(exc).__name__}" + (f" ({code})" if code else "")
    return type(exc).__name__
