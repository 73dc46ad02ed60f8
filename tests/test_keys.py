"""Key cleaning and structure, checked against Go's own output (fixtures/go-path-clean.tsv)."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsbackup.keys import Key, clean_path, key_bytes


def _go_vectors(d: Path) -> list[tuple[str, str]]:
    rows = []
    for line in (d / "go-path-clean.tsv").read_text().splitlines():
        if line.strip():
            a, b = line.split("\t")
            rows.append((json.loads(a), json.loads(b)))
    return rows


def test_every_go_vector_matches(go_fixtures):
    rows = _go_vectors(go_fixtures)
    assert len(rows) >= 15
    for src, want in rows:
        assert str(Key(src)) == want, src


# Our own vectors, worked out from Go's path.Clean rules (Rob Pike's lexical algorithm).
OWN = [
    ("/a/b/../../..", "/"),
    ("/a/./././b/./", "/a/b"),
    ("/../../x/../y", "/y"),
    ("a/../../b", "/b"),
    ("/...", "/..."),
    ("/a/.../b", "/a/.../b"),
    ("/.hidden/./x", "/.hidden/x"),
    ("////", "/"),
    ("/a//b///c", "/a/b/c"),
    ("/a/b/./..", "/a"),
    ("/a/b/c/../../d", "/a/d"),
    ("/x/..y/z", "/x/..y/z"),
    ("/x/y../z", "/x/y../z"),
    ("/blocks/CIQ", "/blocks/CIQ"),
    ("/ü/é", "/ü/é"),
]


@pytest.mark.parametrize("src,want", OWN)
def test_own_vectors(src, want):
    assert str(Key(src)) == want


def test_differs_from_posixpath_where_go_does():
    # posixpath keeps a leading "//" (POSIX allows it to mean something else); Go does not.
    assert posixpath.normpath("//a") == "//a"
    assert str(Key("//a")) == "/a"
    assert clean_path(b"") == b"."
    assert clean_path(b"a/../..") == b".."  # unrooted paths keep leading ".."
    assert clean_path(b"../../a") == b"../../a"


def test_raw_bytes_round_trip():
    raw = b"/pins/\xff\xfe\x00odd"
    k = Key.from_raw(raw)
    assert k.raw == raw
    assert bytes(k) == raw
    assert Key(str(k)).raw == raw  # str form survives via surrogateescape
    assert key_bytes(raw) == raw
    with pytest.raises(ValueError):
        Key.from_raw(b"no-slash")
    with pytest.raises(ValueError):
        Key.from_raw(b"/trailing/")
    with pytest.raises(ValueError):
        key_bytes(b"relative")


def test_structure():
    k = Key("/Comedy/MontyPython/Actor:JohnCleese")
    assert k.namespaces() == ["Comedy", "MontyPython", "Actor:JohnCleese"]
    assert k.list() == k.namespaces()
    assert k.base_namespace == "Actor:JohnCleese"
    assert k.type == "Actor"
    assert k.name == "JohnCleese"
    assert k.parent == Key("/Comedy/MontyPython")
    assert k.path() == Key("/Comedy/MontyPython/Actor")
    assert k.reverse() == Key("/Actor:JohnCleese/MontyPython/Comedy")
    assert Key("/a").instance("b") == Key("/a:b")
    assert Key("/a/b").type == "" and Key("/a/b").name == "b"
    assert Key("/a:b:c").type == "a:b"
    assert Key("/").parent == Key("/") and Key("/a").parent == Key("/")
    assert Key("/").namespaces() == []
    assert Key("/a").is_top_level() and not Key("/a/b").is_top_level()


def test_child():
    assert Key("/a").child(Key("/b/c")) == Key("/a/b/c")
    assert Key("/").child(Key("/b")) == Key("/b")
    assert Key("/a").child(Key("/")) == Key("/a")
    assert Key("/a").child("b//c/") == Key("/a/b/c")
    assert Key("/a").child_string("../b") == Key("/b")


def test_is_ancestor_is_strict():
    a = Key("/a")
    assert a.is_ancestor_of(Key("/a/b"))
    assert a.is_ancestor_of(Key("/a/b/c"))
    assert not a.is_ancestor_of(Key("/a"))
    assert not a.is_ancestor_of(Key("/ab"))
    assert not a.is_ancestor_of(Key("/"))
    assert Key("/").is_ancestor_of(Key("/a"))
    assert not Key("/").is_ancestor_of(Key("/"))
    assert Key("/a/b").is_descendant_of(a)


def test_ordering_is_bytewise_and_go_less_is_available():
    ks = [Key("/a/b"), Key("/a-c"), Key("/a"), Key("/b")]
    assert [str(k) for k in sorted(ks)] == ["/a", "/a-c", "/a/b", "/b"]
    # go-datastore's Key.Less compares namespace by namespace
    assert Key("/a/b").less_by_namespaces(Key("/a-c"))
    assert not Key("/a-c").less_by_namespaces(Key("/a/b"))
    assert Key("/a").less_by_namespaces(Key("/a/b"))
    assert Key("/a") == Key("a/") and hash(Key("/a")) == hash(Key("a"))


def _reference_clean(s: str) -> str:
    """For rooted paths Go's path.Clean equals POSIX normpath except that POSIX keeps a
    leading "//" (implementation-defined meaning); Go folds it to "/"."""
    out = posixpath.normpath("/" + s)
    return "/" + out.lstrip("/") if out.startswith("//") else out


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="/.ab", max_size=24))
def test_clean_matches_reference_on_random_paths(s):
    k = Key(s)
    assert str(k) == _reference_clean(s)
    assert Key(str(k)) == k  # idempotent
    assert "//" not in str(k) and (str(k) == "/" or not str(k).endswith("/"))
