"""Filters: globs, prefix with namespace (ancestor) semantics, value sizes."""

from __future__ import annotations

import pytest

from dsbackup.errors import ConfigError
from dsbackup.migration.filters import compile_glob
from dsbackup.migration.plan import FilterConfig

KEYS = [b"/foo", b"/foo/bar", b"/foo/bar/baz", b"/foobar", b"/fo", b"/other/foo/x"]


def selected(cfg: FilterConfig, keys: list[bytes] = KEYS, size: int = 10) -> list[bytes]:
    f = cfg.compile()
    inside = [k for k in keys if f.start <= k and (f.end is None or k < f.end)]
    return f.select(inside, [b"x" * size] * len(inside))[0]


def test_key_prefix_selects_descendants_only() -> None:
    # the seed tested prefix.startswith(key) — backwards; a prefix selects its namespace
    assert selected(FilterConfig(key_prefix="/foo")) == [b"/foo/bar", b"/foo/bar/baz"]
    assert selected(FilterConfig(key_prefix="/foo/")) == [b"/foo/bar", b"/foo/bar/baz"]
    assert selected(FilterConfig(key_prefix="/")) == KEYS
    assert selected(FilterConfig(key_prefix="/fo")) == []


def test_prefix_becomes_the_scan_range_without_per_record_work() -> None:
    f = FilterConfig(key_prefix="/blocks").compile()
    assert (f.start, f.end, f.keep) == (b"/blocks/", b"/blocks0", None)


@pytest.mark.parametrize("pattern,matches,misses", [
    ("/foo/*", [b"/foo/bar"], [b"/foo/bar/baz", b"/foo", b"/foobar"]),
    ("/foo/**", [b"/foo/bar", b"/foo/bar/baz"], [b"/foo", b"/foobar"]),
    ("/**/x", [b"/other/foo/x", b"/x"], [b"/other/foo/xy"]),
    ("/fo?", [b"/foo"], [b"/fo", b"/fo/o"]),
    ("/[a-f]*", [b"/foo", b"/fo"], [b"/other"]),
    ("/[!f]*", [b"/other"], [b"/foo"]),
])
def test_globs(pattern: str, matches: list[bytes], misses: list[bytes]) -> None:
    m = compile_glob([pattern])
    assert m is not None
    for k in matches:
        assert m.match(k), (pattern, k)
    for k in misses:
        assert not m.match(k), (pattern, k)


def test_patterns_excludes_and_sizes_combine() -> None:
    cfg = FilterConfig(key_patterns=["/foo/**", "/fo"], exclude_patterns=["/foo/bar/*"])
    assert selected(cfg) == [b"/foo/bar", b"/fo"]
    assert selected(FilterConfig(min_value_size=5, max_value_size=10), size=10) == KEYS
    assert selected(FilterConfig(min_value_size=11), size=10) == []
    assert selected(FilterConfig(max_value_size=9), size=10) == []


@pytest.mark.parametrize("cfg", [
    FilterConfig(key_prefix="foo"), FilterConfig(key_patterns=["foo/*"]),
    FilterConfig(key_patterns=["/[abc"]), FilterConfig(min_value_size=-1),
    FilterConfig(min_value_size=5, max_value_size=4),
])
def test_invalid_filters(cfg: FilterConfig) -> None:
    with pytest.raises(ConfigError):
        cfg.compile()
