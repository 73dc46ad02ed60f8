"""Open a datastore from a URI: ``scheme:PATH[?param=value&...]`` or a bare path.

Schemes: ``memory:``, ``lmdb:``, ``flatfs:``, ``leveldb:``, ``sqlite:``, ``kubo:``,
``helia:`` (a Helia repo), ``fsds:`` (js-stores datastore-fs). A bare
path is recognised by what the directory or file holds (see :func:`detect_scheme`).
Backends are imported on first use, so plyvel is only needed for LevelDB and Kubo repos.
"""

from __future__ import annotations

import importlib
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsbackup.datastores.base import BaseDatastore
from dsbackup.errors import ConfigError, DatastoreError

__all__ = ["open_datastore", "parse_uri", "detect_scheme", "register_backend", "SCHEMES"]

Opener = Callable[..., BaseDatastore]

# scheme -> "module:function"; the function takes (path, readonly=..., **params).
SCHEMES: dict[str, str] = {
    "memory": "dsbackup.datastores.memory:open_memory",
    "lmdb": "dsbackup.datastores.lmdb:open_lmdb",
    "flatfs": "dsbackup.datastores.flatfs:open_flatfs",
    "leveldb": "dsbackup.datastores.leveldb:open_leveldb",
    "sqlite": "dsbackup.datastores.sqlite:open_sqlite",
    "kubo": "dsbackup.datastores.kubo:open_kubo",
    "helia": "dsbackup.datastores.helia:open_helia",
    "fsds": "dsbackup.datastores.fsds:open_fsds",
}
_CUSTOM: dict[str, Opener] = {}

SQLITE_HEADER = b"SQLite format 3\x00"


def register_backend(scheme: str, opener: Opener) -> None:
    """Add a scheme: ``opener(path, readonly=..., **params)`` returns a datastore."""
    _CUSTOM[scheme] = opener


def parse_uri(uri: str) -> tuple[str | None, str, dict[str, str]]:
    """Split ``scheme:PATH?k=v`` into ``(scheme, path, params)``; scheme is None for a bare
    path. A one-letter scheme is not recognised (it would be a Windows drive). A leading
    ``~`` or ``~user`` of PATH is expanded (``kubo:~/.ipfs``): every URI goes through here."""
    scheme: str | None = None
    rest = uri
    head, sep, tail = uri.partition(":")
    if sep and len(head) > 1 and head.isidentifier() and "/" not in head:
        scheme, rest = head.lower(), tail
    params: dict[str, str] = {}
    if scheme is not None and "?" in rest:
        rest, _, qs = rest.partition("?")
        params = dict(urllib.parse.parse_qsl(qs, keep_blank_values=True))
    if rest.startswith("~"):  # kubo:~/.ipfs as the shell would expand ~/.ipfs
        rest = os.path.expanduser(rest)
    return scheme, rest, params


def detect_scheme(path: str | os.PathLike[str]) -> str:
    """What a bare path holds: ``data.mdb`` -> lmdb, ``SHARDING`` -> flatfs,
    ``datastore_spec`` -> kubo, ``CURRENT`` and ``LOCK`` -> leveldb, ``blocks/`` without
    ``datastore_spec`` -> helia, a file starting with the SQLite header -> sqlite."""
    p = Path(path)
    if p.is_dir():
        if (p / "datastore_spec").is_file():
            return "kubo"
        if (p / "data.mdb").is_file():
            return "lmdb"
        if (p / "SHARDING").is_file():
            return "flatfs"
        if (p / "CURRENT").is_file() and (p / "LOCK").exists():
            return "leveldb"
        if (p / "blocks").is_dir() and not (p / "blocks" / "SHARDING").exists():
            return "helia"
        raise DatastoreError(
            f"{p}: directory holds no recognised datastore (no datastore_spec, data.mdb, "
            "SHARDING, CURRENT+LOCK or blocks/); name the type with a scheme such as "
            "flatfs:PATH, helia:REPO or fsds:PATH")
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if head == SQLITE_HEADER:
            return "sqlite"
        if p.name == "data.mdb":
            return "lmdb"
        raise DatastoreError(f"{p}: file is not a recognised datastore (not SQLite)")
    raise DatastoreError(f"{p}: no such file or directory (give a scheme to create a store)")


def _resolve(scheme: str) -> Opener:
    if scheme in _CUSTOM:
        return _CUSTOM[scheme]
    target = SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(sorted({*SCHEMES, *_CUSTOM}))
        raise ConfigError(f"unknown datastore scheme {scheme!r} (known: {known})")
    mod, _, fn = target.partition(":")
    opener: Opener = getattr(importlib.import_module(mod), fn)
    return opener


def open_datastore(uri: str | os.PathLike[str], *, readonly: bool = False,
                   **kwargs: Any) -> BaseDatastore:
    """Open a datastore. ``kwargs`` go to the backend (e.g. ``shard=`` for flatfs,
    ``allow_live=`` for kubo) and override URI parameters of the same name."""
    s = os.fspath(uri)
    scheme, path, params = parse_uri(s)
    if scheme is None:
        scheme = detect_scheme(path)
    elif scheme != "memory" and not path:
        raise ConfigError(f"datastore URI {s!r} has no path")
    opener = _resolve(scheme)
    _check_params(s, opener, params)
    params.update(kwargs)
    return opener(path, readonly=readonly, **params)


def check_uri_params(uri: str) -> None:
    """ConfigError for a URI parameter its backend does not take, or a boolean one that is
    not 1/0, true/false, yes/no or on/off, without opening anything (a scheduler config is
    checked at load, not at its first run). An unknown scheme is left to the caller."""
    import inspect

    scheme, _path, params = parse_uri(uri)
    if scheme is None or not params or (scheme not in SCHEMES and scheme not in _CUSTOM):
        return
    opener = _resolve(scheme)
    _check_params(uri, opener, params)
    try:
        sig = inspect.signature(opener).parameters
    except (TypeError, ValueError):
        return
    for key, value in params.items():
        p = sig.get(key)
        if p is not None and isinstance(p.default, bool):
            _bool_param(value, key)


def _check_params(uri: str, opener: Opener, params: dict[str, str]) -> None:
    """A URI parameter the backend does not take (``?max_name=10``, ``?bogus=1``) is a
    ConfigError naming it, not the opener's TypeError."""
    if not params:
        return
    import difflib  # for the hint of an unknown parameter; not at every backup's start
    import inspect

    try:
        sig = inspect.signature(opener)
    except (TypeError, ValueError):  # a builtin opener of a custom scheme: it checks
        return
    names = [n for n, p in sig.parameters.items()
             if p.kind is p.KEYWORD_ONLY and n != "readonly"]
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for key in params:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"known: {', '.join(names)}" if names else "it takes none")
            raise ConfigError(f"{uri}: unknown parameter {key!r} ({hint})")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool_param(value: object, name: str = "parameter") -> bool:
    """A URI's boolean (``sync=0``): 1/0, true/false, yes/no, on/off; anything else (a typo
    such as ``sync=ture``, which read as false) is a ConfigError naming the parameter."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"datastore parameter {name}: expected 1/0, true/false, yes/no or "
                      f"on/off, got {value!r}")


def _int_param(value: object, name: str, lo: int, hi: int) -> int:
    """A URI's integer (``read_ahead=16``) in ``[lo, hi]``; a ConfigError naming the parameter
    otherwise (was int()'s message without it, or an OverflowError deep in a library)."""
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    else:
        try:
            n = int(str(value).strip())
        except ValueError:
            n = None
    if n is None or not lo <= n <= hi:
        raise ConfigError(f"datastore parameter {name}: expected an integer {lo}-{hi}, "
                          f"got {value!r}")
    return n
