"""Record filters compiled from a :class:`FilterConfig`.

- ``key_prefix``: namespace (ancestor) semantics as go-datastore's ``Key.IsAncestorOf`` and
  query prefixes: ``/foo`` selects ``/foo/bar`` and ``/foo/bar/baz`` but neither ``/foobar``
  nor ``/foo`` itself; ``/`` selects everything. It becomes the scan's key range, so it costs
  nothing per record.
- ``key_patterns``: globs on the whole key (docs/PATTERNS.md, the same dialect as backup
  ``--exclude`` and restore ``--pattern``): ``*`` matches within one namespace (no ``/``),
  ``**`` zero or more namespaces, ``?`` one character, ``[...]`` a class. A record is kept
  when any pattern matches. ``exclude_patterns`` drop records that match.
- ``min_value_size`` / ``max_value_size``: inclusive bounds on the value's length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dsbackup.errors import ConfigError
from dsbackup.keys import children_range
from dsbackup.patterns import KeyMatcher, key_matcher

__all__ = ["CompiledFilter", "compile_glob", "compile_filter", "prefix_scan_range"]


def compile_glob(patterns: list[str], where: str = "filter") -> KeyMatcher | None:
    """The native matcher of ``patterns`` (docs/PATTERNS.md), ``None`` when there are none.
    A pattern must start with ``/`` or ``*``: keys start with ``/``, so any other can match
    nothing (a likely typo)."""
    for pattern in patterns:
        if not pattern.startswith("/") and not pattern.startswith("*"):
            raise ConfigError(f"{where}: key pattern {pattern!r} must start with '/' or '*'")
    return key_matcher(patterns, where)


def prefix_scan_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """``[start, end)`` of the strict descendants of ``prefix`` (:func:`children_range`)."""
    return children_range(prefix)


@dataclass
class CompiledFilter:
    """``start``/``end``: the key range to scan; ``keep``: per-record test or ``None`` when
    every record in the range is kept (then batches pass through whole)."""

    start: bytes
    end: bytes | None
    keep: Callable[[bytes, bytes], bool] | None
    needs_values: bool = False

    def select(self, keys: list[bytes], values: list[bytes]
               ) -> tuple[list[bytes], list[bytes], int]:
        """The kept records of a batch and how many were skipped."""
        if self.keep is None:
            return keys, values, 0
        keep = self.keep
        pairs = [(k, v) for k, v in zip(keys, values) if keep(k, v)]
        skipped = len(keys) - len(pairs)
        if not pairs:
            return [], [], skipped
        ks, vs = zip(*pairs)
        return list(ks), list(vs), skipped


def compile_filter(key_prefix: bytes | None, key_patterns: list[str],
                   exclude_patterns: list[str], min_size: int | None, max_size: int | None,
                   where: str = "filters") -> CompiledFilter:
    start, end = prefix_scan_range(key_prefix) if key_prefix is not None else (b"", None)
    inc = compile_glob(key_patterns, f"{where}.key_patterns")
    exc = compile_glob(exclude_patterns, f"{where}.exclude_patterns")
    tests: list[Callable[[bytes, bytes], bool]] = []
    if inc is not None:
        inc_match = inc.match
        tests.append(lambda k, v: inc_match(k))
    if exc is not None:
        exc_match = exc.match
        tests.append(lambda k, v: not exc_match(k))
    if min_size is not None:
        lo = min_size
        tests.append(lambda k, v: len(v) >= lo)
    if max_size is not None:
        hi = max_size
        tests.append(lambda k, v: len(v) <= hi)
    if not tests:
        return CompiledFilter(start, end, None)
    if len(tests) == 1:
        return CompiledFilter(start, end, tests[0], min_size is not None or max_size is not None)
    return CompiledFilter(start, end, lambda k, v: all(t(k, v) for t in tests),
                          min_size is not None or max_size is not None)
