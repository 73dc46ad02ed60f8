"""Typed reading of one TOML table of the scheduler configuration.

Every value is checked for its type and range when the file is loaded, and every error is one
line naming the file, the table and key, what is expected and what was found::

    scheduler.toml: [scheduler] concurrent_backups: expected an integer >= 1, got a string "2"

Booleans are only TOML booleans, integers only TOML integers (``"2"`` and ``true`` are not),
and an unknown key is an error that suggests the closest known key (typos never pass).
Secret values are never shown in a message, only their type.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from dsbackup.errors import ConfigError
from dsbackup.scheduler.durations import parse_duration, parse_size

T = TypeVar("T")
_MISSING: Any = object()
# an address as mail servers take it: local@domain, no spaces, commas, quotes or angle brackets
_EMAIL = re.compile(r"[^\s@,;<>\"()\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def kind_of(value: Any) -> str:
    """How a TOML value is named in messages: ``a string``, ``an integer``, ``a table`` ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"  # TOML dates and times


def shown(value: Any, secret: bool = False) -> str:
    """The value as a message shows it: its kind, plus the value unless it is a secret."""
    if secret or isinstance(value, (Mapping, list)):
        return kind_of(value)
    if isinstance(value, str):
        text = f'"{value}"'
    else:
        text = repr(value) if isinstance(value, (bool, int, float)) else str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind_of(value)} {text}"


class Table:
    """A TOML table being read. ``where`` is how messages name it (``[scheduler]``)."""

    def __init__(self, file: Path | str, where: str, data: Any) -> None:
        self.file = file
        self.where = where
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: {where}: expected a table, got {shown(data)}")
        self.data: Mapping[str, Any] = data

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.where}{' ' + key if key else ''}: {message}")

    def check_keys(self, allowed: Iterable[str]) -> None:
        """Unknown keys are errors; the message suggests the closest known key."""
        allowed = sorted(allowed)
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = (f"did you mean {close[0]!r}?" if close
                        else f"known keys: {', '.join(allowed)}")
                raise self.error(key, f"unknown key ({hint})")

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, "missing (required)")
            return default
        return self.data[key]

    def expect(self, key: str, ok: bool, what: str, value: Any, secret: bool = False) -> None:
        if not ok:
            raise self.error(key, f"expected {what}, got {shown(value, secret)}")

    def string(self, key: str, default: Any = _MISSING, *, secret: bool = False,
               nonempty: bool = True) -> Any:
        v = self._get(key, default)
        if v is default and key not in self.data:
            return v
        self.expect(key, isinstance(v, str) and (v != "" or not nonempty),
                    "a non-empty string" if nonempty else "a string", v, secret)
        return v

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        v = self._get(key, default)
        if key in self.data:
            self.expect(key, isinstance(v, bool), "a boolean (true or false, no quotes)", v)
        return v

    def integer(self, key: str, default: Any = _MISSING, *, lo: int | None = None,
                hi: int | None = None) -> Any:
        v = self._get(key, default)
        if key not in self.data:
            return v
        ok = isinstance(v, int) and not isinstance(v, bool)
        self.expect(key, ok and (lo is None or v >= lo) and (hi is None or v <= hi),
                    f"an integer{_range(lo, hi)}" + ("" if ok else " (no quotes)"), v)
        return v

    def number(self, key: str, default: Any = _MISSING, *, lo: float | None = None,
               hi: float | None = None, positive: bool = False) -> Any:
        v = self._get(key, default)
        if key not in self.data:
            return v
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        rng = " > 0" if positive else _range(lo, hi)
        ok = ok and (not positive or v > 0) and (lo is None or v >= lo) and (hi is None or v <= hi)
        self.expect(key, ok, f"a number{rng}" + ("" if isinstance(v, (int, float)) else
                                                 " (no quotes)"), v)
        return float(v)

    def converted(self, key: str, parse: Callable[[Any], T], what: str,
                  default: Any = None) -> T | Any:
        """A value parsed by ``parse`` (which raises ConfigError); the message says ``what``."""
        if key not in self.data:
            return default
        v = self.data[key]
        try:
            if isinstance(v, bool):
                raise ConfigError("a boolean")
            return parse(v)
        except ConfigError:
            raise self.error(key, f"expected {what}, got {shown(v)}") from None

    def duration(self, key: str, default: Any = None) -> timedelta | Any:
        return self.converted(key, _duration, 'a duration ("90d", "12h", "30m") or seconds',
                              default)

    def size(self, key: str, default: Any = None) -> int | Any:
        return self.converted(key, _size, 'a size ("500M", "20G") or a number of bytes', default)

    def path(self, key: str, base: Path, default: Any = None) -> Path | Any:
        v = self.string(key, None)
        if v is None:
            return None if default is None else base / Path(default).expanduser()
        return base / Path(v).expanduser()

    def location(self, key: str, base: Path, default: Any = None) -> Any:
        """A directory, or an ``s3://BUCKET/PREFIX/`` (dsbackup.storage)."""
        v = self.string(key, None)
        if v is not None and v.startswith("s3://"):
            from dsbackup.storage import S3Location, as_location

            try:
                loc = as_location(v)
            except ConfigError as exc:
                raise self.error(key, str(exc)) from None
            return S3Location(loc.bucket, loc.prefix)
        return self.path(key, base, default)

    def table(self, key: str) -> Table:
        # '[schedule.backup] of "ipfs"' -> '[schedule.backup.encryption] of "ipfs"' (it was
        # '[encryption]': which schedule's was not said)
        head, sep, tail = self.where.partition("]")
        where = (f"{head}.{key}]{tail}" if sep and head.startswith("[")
                 and not head.startswith("[[") else f"[{key}]")
        return Table(self.file, where, self.data.get(key, {}))

    def email(self, key: str, value: Any) -> str:
        ok = isinstance(value, str) and _EMAIL.fullmatch(value) is not None
        self.expect(key, ok, 'an e-mail address ("ops@example.org")', value)
        return value

    def emails(self, key: str) -> list[str] | None:
        """A list of addresses; one address may be given as a plain string."""
        if key not in self.data:
            return None
        v = self.data[key]
        items = [v] if isinstance(v, str) else v
        self.expect(key, isinstance(items, list) and bool(items),
                    'a list of e-mail addresses (["ops@example.org"])', v)
        return [self.email(key, a) for a in items]

    def url(self, key: str, value: Any) -> str:
        """An http(s) URL (a secret: never shown)."""
        self.expect(key, isinstance(value, str), "a URL string", value, secret=True)
        if not re.fullmatch(r"https?://[^\s/?#@]*[^\s/?#]+(?:[/?#]\S*)?", value):
            raise self.error(key, "expected an http:// or https:// URL without spaces or "
                             "control characters (the value is not shown: it is a secret)")
        return value

    def headers(self, key: str) -> dict[str, str]:
        """A table of HTTP header names to string values (values are secrets: never shown)."""
        if key not in self.data:
            return {}
        v = self.data[key]
        self.expect(key, isinstance(v, Mapping),
                    'a table of header names and values ({ Authorization = "Bearer ..." })', v,
                    secret=True)
        for name, value in v.items():
            if not _HEADER_NAME.fullmatch(name):
                raise self.error(key, f"invalid HTTP header name {name!r}")
            self.expect(f"{key}.{name}", isinstance(value, str), "a string", value, secret=True)
            if any(c in value for c in "\r\n\0") or value != value.strip():
                raise self.error(f"{key}.{name}", "a header value may not start or end with "
                                 "spaces or contain a line break (the value is not shown: it "
                                 "is a secret)")
        return dict(v)


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _duration(v: Any) -> timedelta | None:
    if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return parse_duration(v)
    raise ConfigError("not a duration")


def _size(v: Any) -> int | None:
    if isinstance(v, int) and v < 0:
        raise ConfigError("negative")
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return parse_size(v)
    raise ConfigError("not a size")
