"""Record filters compiled from a :class:`FilterConfig`.

- ``key_prefix``: namespace (ancestor) semantics as go-datastore's ``Key.IsAncestorOf`` and
  query prefixes: ``/foo`` selects ``/foo/bar`` and ``/foo/bar/baz`` but neither ``/foobar``
  nor ``/foo`` itself; ``/`` selects everything. It becomes the scan's key range, so it costs
  nothing per record.
- ``key_patterns``: globs on the whole key; ``*`` matches within one namespace (no ``/``),
  ``**`` any depth, ``?`` one character, ``[...]`` a class. A record is kept when any pattern
  matches. ``exclude_patterns`` drop records that match.
- ``min_value_size`` / ``max_value_size``: inclusive bounds on the value's length.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from dsbackup.errors import ConfigError

__all__ = ["CompiledFilter", "compile_glob", "compile_filter", "prefix_scan_range"]


def compile_glob(pattern: str, where: str = "filter") -> re.Pattern[bytes]:
    """Translate a key glob into an anchored bytes regex."""
    if not pattern.startswith("/") and not pattern.startswith("*"):
        raise ConfigError(f"{where}: key pattern {pattern!r} must start with '/' or '*'")
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i) and out and out[-1] == "/":
                    # "/**/" also matches a single "/": zero namespaces between
                    out[-1] = "(?:/.*)?/"
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if j < 0:
                raise ConfigError(f"{where}: unterminated '[' in key pattern {pattern!r}")
            body = pattern[i + 1:j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile(("(?s)" + "".join(out)).encode("utf-8"))
    except re.error as exc:
        raise ConfigError(f"{where}: invalid key pattern {pattern!r}: {exc}") from None


def prefix_scan_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """``[start, end)`` of the strict descendants of ``prefix`` (``0`` is the byte after ``/``)."""
    if prefix == b"/":
        return b"", None
    return prefix + b"/", prefix + b"0"


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
    inc = [compile_glob(p, f"{where}.key_patterns") for p in key_patterns]
    exc = [compile_glob(p, f"{where}.exclude_patterns") for p in exclude_patterns]
    tests: list[Callable[[bytes, bytes], bool]] = []
    if inc:
        matchers = [r.fullmatch for r in inc]
        tests.append(lambda k, v: any(m(k) for m in matchers))
    if exc:
        ex_matchers = [r.fullmatch for r in exc]
        tests.append(lambda k, v: not any(m(k) for m in ex_matchers))
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
