"""Key patterns: the one glob dialect of dsbackup (docs/PATTERNS.md).

Every command that selects keys by glob goes through :func:`key_matcher`: backup
``--exclude`` (``BackupConfig.exclude_patterns``), restore ``--pattern`` (native and Go-format
archives), the Go-format writer, migration filters. Matching runs in C
(``dsbackup._ext.framing.KeyMatcher``); a bad pattern is a :class:`ConfigError` (exit 2).
"""

from __future__ import annotations

from collections.abc import Iterable

from dsbackup._ext.framing import KeyMatcher
from dsbackup.errors import ConfigError

__all__ = ["KeyMatcher", "key_matcher"]


def key_matcher(patterns: Iterable[str | bytes] | None, where: str = "pattern"
                ) -> KeyMatcher | None:
    """A matcher for ``patterns`` (a key matches when any pattern matches it), or ``None``
    when there are none. ``where`` names the option or setting in the error message."""
    pats = list(patterns or [])
    if not pats:
        return None
    try:
        return KeyMatcher(pats)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
