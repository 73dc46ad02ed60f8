"""go-ds-flatfs on-disk layout: shard functions, the ``SHARDING`` file, ``_README``,
``diskUsage.cache`` and the key charset.

Layout of a go-ds-flatfs directory::

    SHARDING          "/repo/flatfs/shard/v1/next-to-last/2\\n"
    _README           written (mode 0444) only for the default shard function
    diskUsage.cache   {"diskUsage":N,"accuracy":"initial-exact"}\\n
    .temp/            temporary files, renamed into place
    <shard>/<NAME>.data

The datastore key of ``<shard>/<NAME>.data`` is ``/NAME``; NAME may only hold
``0-9 A-Z + - _ =`` (uppercase base32 CIDs or multihashes in IPFS).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from dsbackup.errors import DatastoreError

SHARDING_FILE = "SHARDING"
README_FILE = "_README"
DISK_USAGE_FILE = "diskUsage.cache"
TEMP_DIR = ".temp"
# this package's own temp file in a shard directory of a Helia-layout store (flatfs.py
# _temp_file: mkstemp's 8 random characters), left there by a killed restore
OWN_TEMP_PREFIX = b".temp-"
OWN_TEMP = re.compile(rb"\.temp-[a-z0-9_]{8}")
EXTENSION = b".data"
SHARD_PREFIX = "/repo/flatfs/shard/v1"
DEFAULT_SHARD = f"{SHARD_PREFIX}/next-to-last/2"

ACCURACY_EXACT = "initial-exact"
ACCURACY_APPROX = "initial-approximate"
ACCURACY_TIMED_OUT = "initial-timed-out"

_NAME_RE = re.compile(rb"[0-9A-Z+\-_=]+")
_KEY_RE = re.compile(rb"/[0-9A-Z+\-_=]+")

# The text go-ds-flatfs writes to _README next to the default shard function.
README_DEFAULT_SHARD = """\
This is a repository of IPLD objects. Each IPLD object is in a single file,
named <base32 encoding of cid>.data. Where <base32 encoding of cid> is the
"base32" encoding of the CID (as specified in
https://github.com/multiformats/multibase) without the 'B' prefix.
All the object files are placed in a tree of directories, based on a
function of the CID. This is a form of sharding similar to
the objects directory in git repositories. Previously, we used
prefixes, we now use the next-to-last two characters.

    func NextToLast(base32cid string) {
      nextToLastLen := 2
      offset := len(base32cid) - nextToLastLen - 1
      return str[offset : offset+nextToLastLen]
    }

For example, an object with a base58 CIDv1 of

    zb2rhYSxw4ZjuzgCnWSt19Q94ERaeFhu9uSqRgjSdx9bsgM6f

has a base32 CIDv1 of

    BAFKREIA22FLID5AJ2KU7URG47MDLROZIH6YF2KALU2PWEFPVI37YLKRSCA

and will be placed at

    SC/AFKREIA22FLID5AJ2KU7URG47MDLROZIH6YF2KALU2PWEFPVI37YLKRSCA.data

with 'SC' being the last-to-next two characters and the 'B' at the
beginning of the CIDv1 string is the multibase prefix that is not
stored in the filename.
"""


def is_valid_key(key: bytes) -> bool:
    """go-ds-flatfs's key rule: ``/`` then one or more of ``0-9 A-Z + - _ =``."""
    return _KEY_RE.fullmatch(key) is not None


def is_valid_name(name: bytes) -> bool:
    return _NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class ShardFunc:
    """A go-ds-flatfs shard function: ``prefix/N``, ``suffix/N`` or ``next-to-last/N``.

    Names shorter than needed are padded with ``_`` exactly as go-ds-flatfs does.
    """

    kind: str
    param: int

    @classmethod
    def parse(cls, text: str | bytes) -> ShardFunc:
        """Parse ``/repo/flatfs/shard/v1/next-to-last/2`` or a short form such as
        ``next-to-last/2`` (only the last three ``/`` parts matter, as in go-ds-flatfs)."""
        s = text.decode() if isinstance(text, bytes) else text
        parts = s.strip().split("/")
        if len(parts) > 3:
            parts = parts[-3:]
        if len(parts) == 3:
            version, kind, param = parts
            if version != "v1":
                raise DatastoreError(f"flatfs shard function {s.strip()!r}: expected version "
                                     f"'v1', got {version!r}")
        elif len(parts) == 2:
            kind, param = parts
        else:
            raise DatastoreError(f"flatfs shard function {s.strip()!r}: expected "
                                 "KIND/N, e.g. next-to-last/2")
        if kind not in ("prefix", "suffix", "next-to-last"):
            raise DatastoreError(f"flatfs shard function {s.strip()!r}: expected 'prefix', "
                                 f"'suffix' or 'next-to-last', got {kind!r}")
        try:
            n = int(param)
        except ValueError:
            raise DatastoreError(f"flatfs shard function {s.strip()!r}: parameter "
                                 f"{param!r} is not an integer") from None
        if n <= 0:
            raise DatastoreError(f"flatfs shard function {s.strip()!r}: length must be > 0")
        return cls(kind, n)

    def __str__(self) -> str:
        return f"{SHARD_PREFIX}/{self.kind}/{self.param}"

    def dir_of(self, name: bytes) -> bytes:
        """The shard directory name for a file name without extension."""
        n = self.param
        if self.kind == "prefix":
            return (name + b"_" * n)[:n]
        if self.kind == "suffix":
            return (b"_" * n + name)[-n:]
        s = b"_" * (n + 1) + name
        off = len(s) - n - 1
        return s[off:off + n]

    @property
    def ordered_by_shard(self) -> bool:
        """True when shard directories hold contiguous, increasing key ranges (prefix/N),
        so a sorted scan can go shard by shard."""
        return self.kind == "prefix"


def read_sharding(root: str) -> ShardFunc | None:
    """The shard function recorded in ``root/SHARDING``, or None when there is no file."""
    try:
        with open(os.path.join(root, SHARDING_FILE), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    return ShardFunc.parse(text)


def write_sharding(root: str, shard: ShardFunc, *, sync: bool = False) -> None:
    """Write ``SHARDING`` (and ``_README`` for the default function) like go-ds-flatfs;
    `sync`: each fsynced (go-ds-flatfs does not: a crash soon after could leave an empty
    SHARDING, which it refuses to open; the caller fsyncs the directory)."""
    with open(os.path.join(root, SHARDING_FILE), "wb") as f:
        f.write(str(shard).encode() + b"\n")
        if sync:
            f.flush()
            os.fsync(f.fileno())
    if str(shard) == DEFAULT_SHARD:
        path = os.path.join(root, README_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
        with os.fdopen(fd, "wb") as f:
            f.write(README_DEFAULT_SHARD.encode())
            if sync:
                f.flush()
                os.fsync(f.fileno())


def encode_disk_usage(usage: int, accuracy: str) -> bytes:
    """``diskUsage.cache`` content as Go's json.Encoder writes it (with a newline)."""
    return json.dumps({"diskUsage": usage, "accuracy": accuracy},
                      separators=(",", ":")).encode() + b"\n"


def read_disk_usage(root: str) -> tuple[int, str] | None:
    try:
        with open(os.path.join(root, DISK_USAGE_FILE), "rb") as f:
            doc = json.loads(f.read())
        return int(doc["diskUsage"]), str(doc.get("accuracy", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def walk_disk_usage(path: str) -> int:
    """Sizes of ``path`` and everything below it (files and directories, ``lstat``), the
    quantity go-ds-flatfs caches in ``diskUsage.cache``."""
    total = os.lstat(path).st_size
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                total += walk_disk_usage(entry.path)
            else:
                total += entry.stat(follow_symlinks=False).st_size
    return total
