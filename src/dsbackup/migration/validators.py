"""Record validators: ``fn(key: bytes, value: bytes) -> str | None`` (a reason, or ``None``).

Built in:

- ``cid_validator``: the last namespace of the key is base32 of a multihash (Kubo >= 0.12) or
  of a CID (v0 or v1); the value must hash to that multihash. Functions: sha2-256/512/384/224,
  sha1, sha3-*, blake2b/blake2s of any length, md5, identity. A key that names another hash
  function, or that is not a multihash/CID at all, fails.
- ``size_validator:N``: values of at most ``N`` bytes (default 2 MiB, Kubo's block limit).
- ``flatfs_key_validator``: the key is one namespace of characters go-ds-flatfs accepts
  (``A-Z 0-9 + - _ =``), i.e. the record can be stored in a flatfs datastore.
- names registered with :func:`register_validator`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from dsbackup.errors import ConfigError
from dsbackup.multiformats import (
    MultiformatError,
    Multihash,
    b32_decode,
    decode_cid,
    decode_multihash,
    hash_function,
)

__all__ = ["Validator", "compile_validators", "register_validator", "multihash_of_key"]

ValidatorFn = Callable[[bytes, bytes], "str | None"]

DEFAULT_MAX_BLOCK = 2 << 20
_CUSTOM: dict[str, ValidatorFn] = {}
BUILTIN = ("cid_validator", "size_validator", "flatfs_key_validator")
_FLATFS_KEY = re.compile(rb"/[0-9A-Z+\-_=]+")


def register_validator(name: str, fn: ValidatorFn) -> None:
    """Make ``fn(key, value) -> reason | None`` usable as ``validators = ["name"]``."""
    if not name or ":" in name or name in BUILTIN:
        raise ConfigError(f"cannot register validator {name!r}: empty, contains ':' or is "
                          f"a built-in name")
    _CUSTOM[name] = fn


def multihash_of_key(key: bytes) -> Multihash:
    """The multihash a block key names (bare multihash, or the multihash inside a CID)."""
    name = key[key.rfind(b"/") + 1:]
    raw = b32_decode(name)
    if raw[:1] == b"\x01":  # CIDv1 (0x01 is no hash function's code)
        return decode_cid(raw).multihash
    return decode_multihash(raw)  # a bare multihash, which is also what a CIDv0 is


def cid_validator(key: bytes, value: bytes) -> str | None:
    try:
        mh = multihash_of_key(key)
    except MultiformatError as exc:
        return f"key does not name a multihash or CID ({exc})"
    try:
        fn = hash_function(mh.code)
    except MultiformatError as exc:
        return str(exc)
    digest = fn(value)
    if len(mh.digest) > len(digest) or digest[: len(mh.digest)] != mh.digest:
        return f"value does not hash to the key's {mh.name} digest"
    return None


def _size_validator(limit: int) -> ValidatorFn:
    def check(key: bytes, value: bytes) -> str | None:
        if len(value) > limit:
            return f"value of {len(value)} bytes exceeds the {limit}-byte limit"
        return None
    return check


def flatfs_key_validator(key: bytes, value: bytes) -> str | None:
    if _FLATFS_KEY.fullmatch(key) is None:
        return "key is not a single namespace of flatfs characters (A-Z 0-9 + - _ =)"
    return None


@dataclass
class Validator:
    name: str
    fn: ValidatorFn

    def __call__(self, key: bytes, value: bytes) -> str | None:
        return self.fn(key, value)


def _compile(spec: str, where: str) -> Validator:
    name, sep, arg = spec.partition(":")
    name = name.strip()
    if name == "cid_validator" and not sep:
        return Validator(spec, cid_validator)
    if name == "flatfs_key_validator" and not sep:
        return Validator(spec, flatfs_key_validator)
    if name == "size_validator":
        limit = DEFAULT_MAX_BLOCK
        if sep:
            if not arg.strip().isdigit():
                raise ConfigError(f"{where}: size_validator takes a byte count, got {arg!r}")
            limit = int(arg)
        return Validator(spec, _size_validator(limit))
    if name in _CUSTOM and not sep:
        return Validator(spec, _CUSTOM[name])
    if name in BUILTIN or name in _CUSTOM:
        raise ConfigError(f"{where}: validator {name!r} takes no argument")
    known = ", ".join(list(BUILTIN) + sorted(_CUSTOM))
    raise ConfigError(f"{where}: unknown validator {name!r} (known: {known})")


def compile_validators(specs: list[str], where: str = "transform") -> list[Validator]:
    return [_compile(s, f"{where}.validators[{i}]") for i, s in enumerate(specs)]
