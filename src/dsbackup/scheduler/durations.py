"""Parse and format human durations ("90d", "1w2d", "12h", "30m", "10s", "1y") and sizes."""

from __future__ import annotations

import re
from datetime import timedelta

from dsbackup.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdwy])")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(value: str | int | float | timedelta | None) -> timedelta | None:
    """``"1w2d"`` -> 9 days. Units: s, m (minutes), h, d, w, y (365 days). Numbers are seconds."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ConfigError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"negative duration {value!r}")
        return _seconds(value, value)
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ConfigError("empty duration")
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ConfigError(f"invalid duration {value!r} (examples: 90d, 1w2d, 12h, 30m, 1y)")
    return _seconds(total, value)


def _seconds(total: float, value: object) -> timedelta:
    """A duration of ``total`` seconds; nan, inf or one past timedelta's range (about 2.7
    million years) is a ConfigError naming ``value``, not an OverflowError."""
    if total != total:  # nan
        raise ConfigError(f"invalid duration {value!r}")
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise ConfigError(f"duration {value!r} is too long") from None


def format_duration(delta: timedelta) -> str:
    """Inverse of :func:`parse_duration` for whole seconds (``timedelta(days=9)`` -> ``"1w2d"``)."""
    secs = int(delta.total_seconds())
    if secs == 0:
        return "0s"
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s"):
        n, secs = divmod(secs, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def parse_size(value: str | int | None) -> int | None:
    """``"10G"`` -> 10 GiB in bytes; plain integers are bytes."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
    if not m:
        raise ConfigError(f"invalid size {value!r} (examples: 500M, 10G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
