"""Key and value transforms, compiled once from a plan's text and applied per batch.

Key transforms (``key_transform`` in a plan; a list applies in order, then ``mappings``):

- ``add_prefix:/p``     ``/a/b`` -> ``/p/a/b``
- ``remove_prefix:/p``  ``/p/a/b`` -> ``/a/b``; keys not under ``/p`` are left alone
- ``cid_to_multihash``  the last namespace of the key, when it is base32 of a CIDv1, becomes
  base32 of that CID's multihash (Kubo's 11-to-12 migration); CIDv0 keys (already
  multihashes) and keys that are not CIDs are left alone. ``cid_to_multihash:/blocks``
  limits it to keys directly under ``/blocks``.
- a name registered with :func:`register_key_transform` (``fn(key: bytes) -> bytes``).

``mappings`` map a prefix to another with namespace (ancestor) semantics: ``/a -> /b`` turns
``/a`` into ``/b`` and ``/a/x`` into ``/b/x`` but leaves ``/ab`` alone; the longest matching
prefix wins.

Value transforms: ``gzip`` (``gzip:LEVEL``, deterministic: no name, mtime 0), ``gunzip``
(bounded: a value may not inflate beyond :data:`MAX_INFLATED` bytes), the aliases
``compress``/``decompress``, and names registered with :func:`register_value_transform`
(``fn(value: bytes) -> bytes``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from dsbackup.errors import ConfigError, MigrationError
from dsbackup.multiformats import (
    MultiformatError,
    b32_decode,
    b32_encode,
    decode_cid,
)

__all__ = [
    "KeyTransform",
    "ValueTransform",
    "compile_key_transform",
    "compile_value_transform",
    "cid_key_to_multihash_key",
    "register_key_transform",
    "register_value_transform",
    "MAX_INFLATED",
]

MAX_INFLATED = 1 << 30  # gunzip refuses to inflate one value beyond 1 GiB

KeyFn = Callable[[bytes], bytes]
ValueFn = Callable[[bytes], bytes]

_CUSTOM_KEY: dict[str, KeyFn] = {}
_CUSTOM_VALUE: dict[str, ValueFn] = {}

BUILTIN_KEY = ("add_prefix", "remove_prefix", "cid_to_multihash")
BUILTIN_VALUE = ("gzip", "gunzip", "compress", "decompress")


def register_key_transform(name: str, fn: KeyFn) -> None:
    """Make ``fn(key: bytes) -> bytes`` usable as ``key_transform = "name"`` in plans."""
    _check_name(name, BUILTIN_KEY)
    _CUSTOM_KEY[name] = fn


def register_value_transform(name: str, fn: ValueFn) -> None:
    """Make ``fn(value: bytes) -> bytes`` usable as ``value_transform = "name"`` in plans."""
    _check_name(name, BUILTIN_VALUE)
    _CUSTOM_VALUE[name] = fn


def _check_name(name: str, builtins: tuple[str, ...]) -> None:
    if not name or ":" in name or name in builtins:
        raise ConfigError(f"cannot register transform {name!r}: empty, contains ':' or is "
                          f"a built-in name")


def normalize_prefix(text: str, what: str) -> bytes:
    """A prefix from a plan as raw key bytes: must start with ``/``; cleaned like a Key."""
    from dsbackup.keys import Key

    if not isinstance(text, str) or not text.startswith("/"):
        raise ConfigError(f"{what}: prefix must be a key starting with '/', got {text!r}")
    return Key(text).raw


def _under(prefix: bytes, key: bytes) -> bool:
    """``key`` equals ``prefix`` or lies in its namespace (ancestor semantics)."""
    if prefix == b"/":
        return True
    return key == prefix or (key.startswith(prefix) and key[len(prefix):len(prefix) + 1] == b"/")


# -- cid_to_multihash ------------------------------------------------------------------------


def cid_key_to_multihash_key(key: bytes) -> bytes:
    """Kubo 11-to-12 on one key: last namespace = base32(CIDv1) -> base32(multihash)."""
    cut = key.rfind(b"/")
    name = key[cut + 1:]
    if not name:
        return key
    try:
        cid = decode_cid(b32_decode(name))
    except MultiformatError:
        return key  # not a CID: left as it is (raw multihashes, other records)
    if cid.version == 0:
        return key
    return key[:cut + 1] + b32_encode(cid.multihash.bytes).encode("ascii")


# -- compiled transforms ---------------------------------------------------------------------


@dataclass
class KeyTransform:
    """A compiled chain of key functions; ``identity`` when nothing changes keys."""

    steps: list[tuple[str, KeyFn]]

    @property
    def identity(self) -> bool:
        return not self.steps

    def __call__(self, key: bytes) -> bytes:
        for _, fn in self.steps:
            key = fn(key)
        return key

    def apply_batch(self, keys: list[bytes]) -> list[bytes]:
        for _, fn in self.steps:
            keys = [fn(k) for k in keys]
        return keys


@dataclass
class ValueTransform:
    steps: list[tuple[str, ValueFn]]

    @property
    def identity(self) -> bool:
        return not self.steps

    def __call__(self, value: bytes) -> bytes:
        for _, fn in self.steps:
            value = fn(value)
        return value

    def apply_batch(self, values: list[bytes]) -> list[bytes]:
        for _, fn in self.steps:
            values = [fn(v) for v in values]
        return values


def _split(spec: str) -> tuple[str, str | None]:
    name, sep, arg = spec.partition(":")
    return name.strip(), (arg.strip() if sep else None)


def _key_fn(spec: str, where: str) -> KeyFn:
    name, arg = _split(spec)
    if name == "add_prefix":
        if arg is None:
            raise ConfigError(f"{where}: add_prefix needs a prefix, e.g. 'add_prefix:/p'")
        p = normalize_prefix(arg, where)
        if p == b"/":
            return lambda k: k
        return lambda k: p + k if k != b"/" else p
    if name == "remove_prefix":
        if arg is None:
            raise ConfigError(f"{where}: remove_prefix needs a prefix, e.g. 'remove_prefix:/p'")
        p = normalize_prefix(arg, where)
        n = len(p)

        def remove(k: bytes) -> bytes:
            if p != b"/" and _under(p, k):
                return k[n:] or b"/"
            return k
        return remove
    if name == "cid_to_multihash":
        if arg is None:
            return cid_key_to_multihash_key
        p = normalize_prefix(arg, where)

        def scoped(k: bytes) -> bytes:
            parent = k[:k.rfind(b"/")] or b"/"
            return cid_key_to_multihash_key(k) if parent == p else k
        return scoped
    if name in _CUSTOM_KEY:
        if arg is not None:
            raise ConfigError(f"{where}: custom key transform {name!r} takes no argument")
        return _checked_custom_key(name, _CUSTOM_KEY[name])
    known = ", ".join(list(BUILTIN_KEY) + sorted(_CUSTOM_KEY))
    raise ConfigError(f"{where}: unknown key transform {name!r} (known: {known})")


def _checked_custom_key(name: str, fn: KeyFn) -> KeyFn:
    def run(k: bytes) -> bytes:
        out = fn(k)
        if not isinstance(out, bytes) or not out.startswith(b"/"):
            raise MigrationError(f"key transform {name!r} returned {out!r} for key "
                                 f"{k!r}: keys must be bytes starting with '/'")
        return out
    return run


def _mapping_fn(mappings: dict[str, str], where: str) -> KeyFn:
    table = sorted(((normalize_prefix(a, f"{where}.mappings"),
                     normalize_prefix(b, f"{where}.mappings")) for a, b in mappings.items()),
                   key=lambda ab: len(ab[0]), reverse=True)

    def remap(k: bytes) -> bytes:
        for src, dst in table:
            if _under(src, k):
                rest = k[len(src):] if src != b"/" else k
                if dst == b"/":
                    return rest or b"/"
                return dst + (rest if rest != b"/" else b"")
        return k
    return remap


def compile_key_transform(specs: list[str], mappings: dict[str, str] | None,
                          where: str = "transform") -> KeyTransform:
    steps: list[tuple[str, KeyFn]] = []
    for i, spec in enumerate(specs):
        steps.append((spec, _key_fn(spec, f"{where}.key_transform[{i}]")))
    if mappings:
        steps.append(("mappings", _mapping_fn(mappings, where)))
    return KeyTransform(steps)


# -- value transforms ------------------------------------------------------------------------


def _gzip_fn(level: int) -> ValueFn:
    def gz(v: bytes) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, 31)
        return c.compress(v) + c.flush()
    return gz


def _gunzip(v: bytes) -> bytes:
    out = bytearray()
    data = v
    while data:
        d = zlib.decompressobj(31)
        out += d.decompress(data, MAX_INFLATED + 1 - len(out))
        if len(out) > MAX_INFLATED or d.unconsumed_tail:
            raise MigrationError(f"gunzip: a value inflates beyond {MAX_INFLATED} bytes")
        if not d.eof:
            raise MigrationError("gunzip: value is a truncated gzip stream")
        data = d.unused_data  # further gzip members
    return bytes(out)


def _safe_gunzip(v: bytes) -> bytes:
    try:
        return _gunzip(v)
    except zlib.error as exc:
        raise MigrationError(f"gunzip: value is not gzip data ({exc})") from None


def _value_fn(spec: str, where: str) -> ValueFn:
    name, arg = _split(spec)
    if name in ("gzip", "compress"):
        level = 6
        if arg is not None:
            if not arg.isdigit() or not 0 <= int(arg) <= 9:
                raise ConfigError(f"{where}: gzip level must be 0-9, got {arg!r}")
            level = int(arg)
        return _gzip_fn(level)
    if name in ("gunzip", "decompress"):
        if arg is not None:
            raise ConfigError(f"{where}: {name} takes no argument")
        return _safe_gunzip
    if name in _CUSTOM_VALUE:
        if arg is not None:
            raise ConfigError(f"{where}: custom value transform {name!r} takes no argument")
        return _CUSTOM_VALUE[name]
    known = ", ".join(list(BUILTIN_VALUE) + sorted(_CUSTOM_VALUE))
    raise ConfigError(f"{where}: unknown value transform {name!r} (known: {known})")


def compile_value_transform(specs: list[str], where: str = "transform") -> ValueTransform:
    return ValueTransform([(s, _value_fn(s, f"{where}.value_transform[{i}]"))
                           for i, s in enumerate(specs)])
