"""Secrets (passwords, tokens, webhook and ping URLs) in a type that never prints its value.

``str()``/``repr()``/``format()`` of a :class:`Secret` give ``***`` (a URL keeps its scheme,
host and port: ``https://hc-ping.com/***``), so a secret that ends up in a log line, an
exception message or ``--json`` output by mistake shows nothing. Only :meth:`Secret.reveal`
gives the value, and only the notifiers that send it call it.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """``https://user:pw@hc-ping.com/uuid?k=t`` -> ``https://hc-ping.com/***``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    if not parts.scheme or not host or not host.isprintable() or " " in host:
        return "***"
    return f"{parts.scheme}://{host}{port}/***"


class Secret:
    """A secret string; its printed forms are redacted."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"a secret is a string, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for sending it where it belongs."""
        return self._value

    def redacted(self) -> str:
        return redact_url(self._value) if "://" in self._value else "***"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"Secret({self.redacted()!r})"

    def __format__(self, spec: str) -> str:
        return format(self.redacted(), spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def reveal(value: Secret | str | None) -> str | None:
    """The plain value of a secret (or of a plain string), None for None."""
    return value.reveal() if isinstance(value, Secret) else value
