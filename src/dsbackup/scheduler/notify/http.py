"""A small HTTP client for notifications: no redirects, a deadline, retries with backoff."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # a 3xx is then raised as HTTPError: secrets never follow a redirect


_OPENER = urllib.request.build_opener(_NoRedirect)


class HttpFailure(Exception):
    """The request did not succeed; the message never contains the URL."""


def request(url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
            method: str | None = None, timeout: float = 10.0, retries: int = 0,
            backoff: float = 0.5) -> int:
    """Send one request, retrying transient failures until ``timeout`` seconds have passed.

    Returns the final HTTP status (2xx). Raises :class:`HttpFailure` otherwise.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpFailure(f"gave up after {attempt} attempt(s) within {timeout:g} s")
        attempt += 1
        req = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
        retryable = False
        try:
            with _OPENER.open(req, timeout=remaining) as resp:
                resp.read(65536)
                return resp.status
        except urllib.error.HTTPError as exc:
            retryable = exc.code in RETRY_STATUS
            error = f"HTTP {exc.code}"
            if 300 <= exc.code < 400:
                error += " (redirects are not followed)"
        except urllib.error.URLError as exc:
            retryable = True
            error = f"connection failed: {exc.reason}"
        except (TimeoutError, OSError) as exc:
            retryable = True
            error = f"{type(exc).__name__}: {exc}"
        if not retryable or attempt > retries:
            raise HttpFailure(f"{error} after {attempt} attempt(s)")
        pause = min(backoff * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic()))
        if pause <= 0:
            raise HttpFailure(f"{error} after {attempt} attempt(s); no time left to retry")
        time.sleep(pause)
