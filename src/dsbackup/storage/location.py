"""Archive locations (docs/STORAGE.md): a local path, ``s3://BUCKET/KEY``, or ``-`` (a stream).

A local location stays a :class:`pathlib.Path`, so local behaviour is unchanged. An S3 location
is an :class:`S3Location`, which offers the few path operations the archive layer uses on
archive names (``name``, ``parent``, ``/``, ``str``) but no ``__fspath__``: handing one to a
local file function fails loudly instead of creating a file called ``s3:``.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from dsbackup._plain import Frozen
from dsbackup.errors import ConfigError

STREAM = "-"
S3_SCHEME = "s3://"


class S3Location(Frozen):
    """An object (``key``) or a prefix (``key`` empty or ending in ``/``) in a bucket.
    Ordered by (bucket, key): lineage sorts tied parents."""

    __slots__ = ("bucket", "key")
    bucket: str
    key: str

    def __init__(self, bucket: str, key: str = "") -> None:
        self._set(bucket, key)

    def __lt__(self, other: object) -> bool:
        if isinstance(other, S3Location):
            return (self.bucket, self.key) < (other.bucket, other.key)
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, S3Location):
            return (self.bucket, self.key) <= (other.bucket, other.key)
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, S3Location):
            return (self.bucket, self.key) > (other.bucket, other.key)
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, S3Location):
            return (self.bucket, self.key) >= (other.bucket, other.key)
        return NotImplemented

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rpartition("/")[2]

    @property
    def parent(self) -> S3Location:
        head = self.key.rstrip("/").rpartition("/")[0]
        return S3Location(self.bucket, head + "/" if head else "")

    @property
    def prefix(self) -> str:
        """The key as a prefix of the objects "in" this location."""
        return self.key if self.is_prefix else self.key + "/"

    def __truediv__(self, name: str | os.PathLike[str]) -> S3Location:
        rel = os.fspath(name)
        joined = posixpath.normpath(posixpath.join("/" + self.prefix, rel)).lstrip("/")
        return S3Location(self.bucket, joined)

    def with_name(self, name: str) -> S3Location:
        return self.parent / name


Location = Path | S3Location | str  # str: only STREAM


def is_s3(loc: object) -> bool:
    return isinstance(loc, S3Location) or (isinstance(loc, str) and loc.startswith(S3_SCHEME))


def is_stream(loc: object) -> bool:
    return isinstance(loc, str) and loc == STREAM


def is_remote(loc: object) -> bool:
    """Not a local file: an S3 object or a stream (no local path checks apply)."""
    return is_s3(loc) or is_stream(loc)


def parse_s3(text: str) -> S3Location:
    rest = text[len(S3_SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{text}: an S3 location is s3://BUCKET/KEY (no bucket given)")
    if not (3 <= len(bucket) <= 63) or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789.-"
                                           for c in bucket):
        raise ConfigError(f"{text}: {bucket!r} is not a valid bucket name (3-63 lower-case "
                          "letters, digits, dots and hyphens)")
    if "//" in key or key.startswith("/"):
        raise ConfigError(f"{text}: empty path segment in the object key")
    return S3Location(bucket, key)


def as_location(value: str | os.PathLike[str] | S3Location) -> Path | S3Location | str:
    """A location from what the user gave: ``s3://...`` an S3Location, ``-`` the stream,
    anything else a local Path (``~`` is not expanded here, as before)."""
    if isinstance(value, S3Location):
        return value
    if isinstance(value, str):
        if value == STREAM:
            return STREAM
        if value.startswith(S3_SCHEME):
            return parse_s3(value)
    return Path(value)


def identity(loc: Path | S3Location | str) -> str:
    """A string naming the same archive however it was written (symlinks resolved)."""
    if isinstance(loc, S3Location) or loc == STREAM:
        return str(loc)
    return os.path.realpath(loc)


def display(value: object) -> str:
    """How a location (or an opened Source: its location) is named in messages."""
    value = getattr(value, "location", value)
    if isinstance(value, (str, os.PathLike, S3Location)):
        return str(as_location(value))
    return str(value)


def relative_hint(target: Path | S3Location | str, base: Path | S3Location | str,
                  ) -> str | None:
    """`target` relative to `base`'s directory (the parent hint of an incremental), or None
    when they do not share a file system or bucket."""
    if isinstance(target, S3Location) and isinstance(base, S3Location):
        if target.bucket != base.bucket:
            return None
        return posixpath.relpath("/" + target.key, "/" + (base.parent.key or ""))
    if isinstance(target, Path) and isinstance(base, Path):
        return os.path.relpath(target.resolve(), base.resolve().parent)
    return None
