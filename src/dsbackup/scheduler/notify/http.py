"""A small HTTP client for notifications: no redirects, a deadline, retries with backoff.

Errors never carry the URL's path or query, a header value or the library's text: the message
names the target as ``scheme://host:port/***`` and the failure by status code or error kind.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from dsbackup.scheduler.notify.failure import NotificationFailure, describe
from dsbackup.scheduler.secret import Secret, redact_url, reveal

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # a 3xx is then raised as HTTPError: secrets never follow a redirect


_OPENER = urllib.request.build_opener(_NoRedirect)


class HttpFailure(NotificationFailure):
    """The request did not succeed; the message never contains the URL's path or a header."""


def _attempt(url: str, data: bytes | None, headers: dict[str, str], method: str | None,
             timeout: float) -> tuple[int | None, str, bool]:
    """One request: (status if 2xx else None, error description, retryable)."""
    try:
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        with _OPENER.open(req, timeout=timeout) as resp:
            resp.read(65536)
            return resp.status, "", False
    except urllib.error.HTTPError as exc:
        error = f"HTTP {exc.code}"
        if 300 <= exc.code < 400:
            error += " (redirects are not followed)"
        return None, error, exc.code in RETRY_STATUS
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, BaseException) else exc
        return None, f"connection failed: {describe(reason)}", True
    except (TimeoutError, OSError) as exc:
        return None, describe(exc), True
    except Exception as exc:  # noqa: BLE001 - e.g. http.client.InvalidURL quoting the path
        return None, f"request refused by the HTTP client: {describe(exc)}", False


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
