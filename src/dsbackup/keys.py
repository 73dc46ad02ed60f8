"""Datastore keys with go-datastore semantics.

A :class:`Key` is a hierarchical, slash-separated name such as ``/blocks/CIQ...``. It holds
raw bytes: Go strings are byte strings, so a key read from a store may hold any bytes and
must survive a round trip unchanged. Text is encoded as UTF-8; bytes that are not UTF-8 are
carried through ``str`` with the ``surrogateescape`` error handler.

Cleaning (``Key("...")``) follows go-datastore's ``NewKey``: an empty string becomes ``/``,
a missing leading slash is added, and the result goes through Go's ``path.Clean`` (which
differs from :func:`posixpath.normpath`: ``//a`` becomes ``/a`` and ``/..`` becomes ``/``).
:meth:`Key.from_raw` is go-datastore's ``RawKey``: no cleaning, only a shape check.

Ordering: keys compare bytewise on their raw bytes. That is the order every backend scans
in, and the order of go-datastore's ``query.OrderByKey`` (Go compares strings bytewise,
which for UTF-8 text is code point order). go-datastore's ``Key.Less`` compares namespace by
namespace instead (``/a/b`` sorts before ``/a-c`` there, after it bytewise); that order is
available as :meth:`Key.less_by_namespaces` for callers that need it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import total_ordering

__all__ = ["Key", "children_range", "clean_path", "key_bytes", "key_str", "KeyLike"]

_SLASH = 0x2F
_DOT = 0x2E


def clean_path(path: bytes) -> bytes:
    """Go's ``path.Clean`` on bytes (lexical: no file system access)."""
    if not path:
        return b"."
    # Fast path: already clean and rooted (the common case for keys read from stores).
    if (
        path[0] == _SLASH
        and b"//" not in path
        and b"/." not in path
        and (len(path) == 1 or path[-1] != _SLASH)
    ):
        return path
    n = len(path)
    rooted = path[0] == _SLASH
    out = bytearray()
    r = 0
    dotdot = 0
    if rooted:
        out.append(_SLASH)
        r = dotdot = 1
    while r < n:
        c = path[r]
        if c == _SLASH or (c == _DOT and (r + 1 == n or path[r + 1] == _SLASH)):
            r += 1  # empty element or "."
        elif (
            c == _DOT
            and path[r + 1] == _DOT
            and (r + 2 == n or path[r + 2] == _SLASH)
        ):
            r += 2
            if len(out) > dotdot:
                w = len(out) - 1
                while w > dotdot and out[w] != _SLASH:
                    w -= 1
                del out[w:]
            elif not rooted:
                if out:
                    out.append(_SLASH)
                out += b".."
                dotdot = len(out)
        else:
            if (rooted and len(out) != 1) or (not rooted and out):
                out.append(_SLASH)
            end = path.find(b"/", r)
            if end < 0:
                end = n
            out += path[r:end]
            r = end
    if not out:
        return b"."
    return bytes(out)


def _to_bytes(value: str | bytes | bytearray | memoryview) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


def _new_key_bytes(value: bytes) -> bytes:
    if not value:
        return b"/"
    if value[0] != _SLASH:
        value = b"/" + value
    return clean_path(value)


@total_ordering
class Key:
    """A cleaned datastore key. ``Key("a//b/")`` is ``/a/b``.

    Construct from ``str`` or bytes (both are cleaned), or use :meth:`from_raw` for bytes
    read from a store. Hashable, comparable (bytewise), and convertible with ``str()`` and
    ``bytes()``.
    """

    __slots__ = ("_raw",)

    def __init__(self, key: str | bytes | Key = "") -> None:
        if isinstance(key, Key):
            self._raw: bytes = key._raw
        else:
            self._raw = _new_key_bytes(_to_bytes(key))

    @classmethod
    def from_raw(cls, raw: bytes | str) -> Key:
        """go-datastore's ``RawKey``: no cleaning. Must start with ``/`` and, unless it is
        ``/``, must not end with one."""
        b = _to_bytes(raw)
        if not b or b[0] != _SLASH or (len(b) > 1 and b[-1] == _SLASH):
            raise ValueError(f"invalid raw key {b!r}: must start with '/' and not end with '/'")
        k = cls.__new__(cls)
        k._raw = b
        return k

    # -- conversions ---------------------------------------------------------------------
    @property
    def raw(self) -> bytes:
        """The key's bytes, exactly as stored."""
        return self._raw

    def __bytes__(self) -> bytes:
        return self._raw

    def __str__(self) -> str:
        return self._raw.decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"Key({str(self)!r})"

    def __fspath__(self) -> str:  # pragma: no cover - guard against accidental path use
        raise TypeError("a Key is not a file path")

    # -- comparison ----------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Key):
            return self._raw == other._raw
        return NotImplemented

    def __lt__(self, other: Key) -> bool:
        if isinstance(other, Key):
            return self._raw < other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)

    def less_by_namespaces(self, other: Key) -> bool:
        """go-datastore's ``Key.Less``: compare namespace lists element by element."""
        a, b = self.namespaces_bytes(), other.namespaces_bytes()
        for i, x in enumerate(a):
            if i >= len(b):
                return False
            if x != b[i]:
                return x < b[i]
        return len(a) < len(b)

    # -- structure -----------------------------------------------------------------------
    def namespaces_bytes(self) -> list[bytes]:
        """The namespaces as bytes: ``/a/b`` gives ``[b"a", b"b"]``; ``/`` gives ``[]``."""
        if self._raw == b"/":
            return []
        return self._raw[1:].split(b"/")

    def namespaces(self) -> list[str]:
        """The namespaces: ``/a/b:c`` gives ``["a", "b:c"]``; the root ``/`` gives ``[]``
        (go-datastore's ``List`` returns ``[""]`` for the root)."""
        return [p.decode("utf-8", "surrogateescape") for p in self.namespaces_bytes()]

    list = namespaces

    @property
    def base_namespace(self) -> str:
        """The last namespace: ``/a/b:c`` gives ``b:c``; the root gives ``""``."""
        ns = self.namespaces()
        return ns[-1] if ns else ""

    @property
    def type(self) -> str:
        """The type of the last namespace: ``/a/b:c`` gives ``b``; ``""`` when it has no ``:``."""
        parts = self.base_namespace.split(":")
        return ":".join(parts[:-1]) if len(parts) > 1 else ""

    @property
    def name(self) -> str:
        """The value of the last namespace: ``/a/b:c`` gives ``c``; ``/a/b`` gives ``b``."""
        return self.base_namespace.split(":")[-1]

    @property
    def parent(self) -> Key:
        """``/a/b`` gives ``/a``; a top-level key and the root give ``/``."""
        i = self._raw.rfind(b"/")
        return Key.from_raw(self._raw[:i] or b"/")

    def child(self, other: Key | str | bytes) -> Key:
        """``/a`` child ``/b/c`` gives ``/a/b/c`` (a string or bytes child is cleaned first)."""
        o = other if isinstance(other, Key) else Key(other)
        if self._raw == b"/":
            return o
        if o._raw == b"/":
            return self
        return Key.from_raw(self._raw + o._raw)

    def child_string(self, name: str | bytes) -> Key:
        """go-datastore's ``ChildString``: ``Key(self + "/" + name)``, cleaned."""
        return Key(self._raw + b"/" + _to_bytes(name))

    def instance(self, name: str) -> Key:
        """``/a/b`` instance ``c`` gives ``/a/b:c``."""
        return Key(str(self) + ":" + name)

    def path(self) -> Key:
        """The parent joined with the type: ``/a/b:c`` gives ``/a/b``."""
        return Key(str(self.parent) + "/" + self.type)

    def reverse(self) -> Key:
        """Namespaces reversed: ``/a/b/c`` gives ``/c/b/a``."""
        return Key(b"/" + b"/".join(reversed(self.namespaces_bytes())))

    def is_ancestor_of(self, other: Key) -> bool:
        """Strict: ``/a`` is an ancestor of ``/a/b`` but not of ``/a`` or ``/ab``."""
        o = other._raw
        s = self._raw
        if len(o) <= len(s):
            return False
        if s == b"/":
            return True
        return o.startswith(s) and o[len(s)] == _SLASH

    def is_descendant_of(self, other: Key) -> bool:
        return other.is_ancestor_of(self)

    def is_top_level(self) -> bool:
        return len(self.namespaces_bytes()) == 1

    @classmethod
    def with_namespaces(cls, namespaces: Iterable[str]) -> Key:
        return cls("/".join(namespaces))


KeyLike = Key | str | bytes


def key_bytes(key: KeyLike) -> bytes:
    """The raw bytes of a key argument: a :class:`Key` as is, a ``str`` cleaned like
    ``NewKey``, ``bytes`` taken as raw stored bytes (no cleaning, like ``RawKey``)."""
    if isinstance(key, Key):
        return key._raw
    if isinstance(key, str):
        return _new_key_bytes(key.encode("utf-8", "surrogateescape"))
    if isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
        if not b or b[0] != _SLASH:
            raise ValueError(f"invalid raw key {b!r}: must start with '/'")
        return b
    raise TypeError(f"expected Key, str or bytes, got {type(key).__name__}")


def key_str(raw: bytes) -> str:
    """Raw key bytes as a ``str`` that encodes back to the same bytes."""
    return raw.decode("utf-8", "surrogateescape")


def children_range(prefix: Key | str | bytes | None) -> tuple[bytes, bytes | None]:
    """The ``[start, end)`` byte range of the children of ``prefix`` (go-datastore's query
    prefix, ``Key.IsAncestorOf``): ``/foo`` holds ``/foo/bar`` and ``/foo/bar/baz``, neither
    ``/foobar`` nor ``/foo`` itself. That is ``[b"/foo/", b"/foo0")``: ``0`` is the byte after
    ``/``. ``None`` or the root ``/`` give the whole key space ``(b"", None)``. The prefix is
    cleaned like ``Key(...)``: ``/foo/`` is ``/foo``."""
    if prefix is None:
        return b"", None
    p = Key(prefix).raw
    if p == b"/":
        return b"", None
    return p + b"/", p + b"0"
