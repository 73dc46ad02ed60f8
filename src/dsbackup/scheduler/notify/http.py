"""A small HTTP client for notifications: no redirects, a deadline, retries with backoff.

The deadline is total: a socket timeout bounds each read only, so a server that dripped its
answer a byte a second kept a notify thread (and its connection) past the dispatcher's bound,
for as long as it dripped; each attempt's sockets are now shut down when its time is up.

Errors never carry the URL's path or query, a header value or the library's text: the message
names the target as ``scheme://host:port/***`` and the failure by status code or error kind.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from dsbackup.scheduler.notify.failure import NotificationFailure, describe
from dsbackup.scheduler.secret import Secret, redact_url, reveal

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # a 3xx is then raised as HTTPError: secrets never follow a redirect


class _Deadline:
    """Shuts the sockets of one attempt down when `seconds` have passed: a read blocked on
    a dripping server returns at once (end of stream) instead of at the drip's end."""

    def __init__(self, seconds: float) -> None:
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.expired = False
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: Any) -> None:
        with self._lock:
            self._socks.append(sock)
            late = self.expired
        if late:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for s in socks:
            _shut(s)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed meanwhile (a closed socket object has no descriptor to reuse)
        pass


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's opener without redirects, whose connections `deadline` watches once open
    (a TLS handshake is bounded as a whole by the socket timeout already)."""
    class Plain(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class Tls(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class PlainHandler(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(Plain, req)

    class TlsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(Tls, req, context=self._context)

    return urllib.request.build_opener(_NoRedirect, PlainHandler, TlsHandler)


class HttpFailure(NotificationFailure):
    """The request did not succeed; the message never contains the URL's path or a header."""


def _attempt(url: str, data: bytes | None, headers: dict[str, str], method: str | None,
             timeout: float) -> tuple[int | None, str, bool]:
    """One request within `timeout` seconds in all: (status if 2xx else None, error
    description, retryable)."""
    deadline = _Deadline(timeout)
    try:
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        with _opener(deadline).open(req, timeout=timeout) as resp:
            try:
                resp.read(65536)
            except (OSError, http.client.HTTPException):
                if not deadline.expired:
                    raise
            return resp.status, "", False  # (its status came: a body cut short is no matter)
    except urllib.error.HTTPError as exc:
        error = f"HTTP {exc.code}"
        if 300 <= exc.code < 400:
            error += " (redirects are not followed)"
        return None, error, exc.code in RETRY_STATUS
    except Exception as exc:  # noqa: BLE001 - e.g. http.client.InvalidURL quoting the path
        if deadline.expired:  # cut by the deadline (a dripping server): not worth a retry
            return None, f"no whole answer within {timeout:.3g} s", False
        if isinstance(exc, urllib.error.URLError):
            reason = exc.reason if isinstance(exc.reason, BaseException) else exc
            return None, f"connection failed: {describe(reason)}", True
        if isinstance(exc, OSError):  # (TimeoutError too)
            return None, describe(exc), True
        return None, f"request refused by the HTTP client: {describe(exc)}", False
    finally:
        deadline.cancel()


def request(url: str | Secret, *, data: bytes | None = None,
            headers: Mapping[str, str | Secret] | None = None, method: str | None = None,
            timeout: float = 10.0, retries: int = 0, backoff: float = 0.5) -> int:
    """Send one request, retrying transient failures until ``timeout`` seconds have passed.

    Returns the final HTTP status (2xx). Raises :class:`HttpFailure` otherwise.
    """
    plain_url = reveal(url) or ""
    plain_headers = {k: reveal(v) or "" for k, v in (headers or {}).items()}
    target = f"{method or ('POST' if data is not None else 'GET')} {redact_url(plain_url)}"
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpFailure(f"{target}: gave up after {attempt} attempt(s) within "
                              f"{timeout:g} s")
        attempt += 1
        status, error, retryable = _attempt(plain_url, data, plain_headers, method, remaining)
        if status is not None:
            return status
        if not retryable or attempt > retries:
            raise HttpFailure(f"{target}: {error} after {attempt} attempt(s)")
        pause = min(backoff * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic()))
        if pause <= 0:
            raise HttpFailure(f"{target}: {error} after {attempt} attempt(s); no time left "
                              "to retry")
        time.sleep(pause)
