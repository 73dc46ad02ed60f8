"""The node member's data (docs/FORMAT.md §11.2): a node's own files, encoded and checked.

Decoding checks everything a hostile archive could put there before anything is written:
paths (relative, `/`-separated, no empty/`.`/`..` segment, no NUL or backslash), strictly
increasing order (no duplicates), kinds 0/1, permission bits only, sizes inside the data.
"""

from __future__ import annotations

import struct

from dsbackup._plain import Frozen
from dsbackup.archive.format import read_uvarint, write_uvarint
from dsbackup.errors import IntegrityError

NODE_MAGIC = b"DSN1"
KIND_FILE = 0
KIND_DIR = 1
MAX_PATH_BYTES = 4096
MAX_NODE_BYTES = 16 << 20  # the whole member's data (§9)
_HEADER = struct.Struct("<4sIQ")
_FIXED = struct.Struct("<BIq")  # kind u8, mode u32, mtime_ns i64


class NodeFile(Frozen):
    """One entry: `path` relative to the repository root (bytes, `/`-separated)."""

    __slots__ = ("path", "kind", "mode", "mtime_ns", "data")
    path: bytes
    kind: int
    mode: int
    mtime_ns: int
    data: bytes

    def __init__(self, path: bytes, kind: int, mode: int, mtime_ns: int,
                 data: bytes = b"") -> None:
        self._set(path, kind, mode, mtime_ns, data)

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR


def path_problem(path: bytes) -> str | None:
    """Why `path` may not name a node file (None when it may)."""
    if not 1 <= len(path) <= MAX_PATH_BYTES:
        return f"path length {len(path)} outside 1..{MAX_PATH_BYTES}"
    if b"\0" in path or b"\\" in path:
        return "path holds a NUL or a backslash"
    if path.startswith(b"/"):
        return "absolute path"
    if any(seg in (b"", b".", b"..") for seg in path.split(b"/")):
        return "path with an empty, '.' or '..' segment"
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return "path is not UTF-8"
    return None


def encode_node(files: list[NodeFile]) -> bytes:
    """The member data for `files` (sorted here; paths must be valid and unique)."""
    files = sorted(files, key=lambda f: f.path)
    parts = [_HEADER.pack(NODE_MAGIC, 0, len(files))]
    prev: bytes | None = None
    for f in files:
        problem = path_problem(f.path)
        if problem is not None:
            raise ValueError(f"node file {f.path!r}: {problem}")
        if f.path == prev:
            raise ValueError(f"node file {f.path!r} given twice")
        if f.kind not in (KIND_FILE, KIND_DIR) or (f.kind == KIND_DIR and f.data):
            raise ValueError(f"node file {f.path!r}: bad kind {f.kind} or data")
        prev = f.path
        parts += [write_uvarint(len(f.path)), f.path, _FIXED.pack(f.kind, f.mode & 0o7777,
                                                             f.mtime_ns),
                  write_uvarint(len(f.data)), f.data]
    return b"".join(parts)


def decode_node(data: bytes | memoryview, where: str) -> list[NodeFile]:
    """Every entry of a node member's data, after every check; IntegrityError (exit 3, naming
    `where` and the entry) on anything malformed or hostile."""
    buf = memoryview(data)
    if len(buf) > MAX_NODE_BYTES:
        raise IntegrityError(f"{where}: {len(buf)} bytes, over the 16 MiB limit", part="node")
    if len(buf) < _HEADER.size:
        raise IntegrityError(f"{where}: {len(buf)} bytes is shorter than its header",
                             part="node")
    magic, flags, count = _HEADER.unpack_from(buf)
    if magic != NODE_MAGIC or flags != 0:
        raise IntegrityError(f"{where}: bad magic or flags", part="node")
    out: list[NodeFile] = []
    pos = _HEADER.size
    prev: bytes | None = None
    files: set[bytes] = set()  # regular files: no entry may lie under one
    for i in range(count):
        if pos >= len(buf):
            raise IntegrityError(f"{where}: declares {count} entries, the data ends after {i}",
                                 part="node")
        plen, pos = read_uvarint(buf, pos, f"{where}: entry {i}", "node")
        if plen > len(buf) - pos:
            raise IntegrityError(f"{where}: entry {i}: path length {plen} beyond the data",
                                 part="node")
        path = bytes(buf[pos : pos + plen])
        pos += plen
        at = f"{where}: entry {i} {path[:200]!r}"
        problem = path_problem(path)
        if problem is not None:
            raise IntegrityError(f"{at}: {problem}", part="node")
        if prev is not None and path <= prev:
            raise IntegrityError(f"{at}: {'duplicate' if path == prev else 'unordered'} path",
                                 part="node")
        prev = path
        segs = path.split(b"/")
        if any(b"/".join(segs[:j]) in files for j in range(1, len(segs))):
            raise IntegrityError(f"{at}: lies under a path that is a regular file",
                                 part="node")
        if pos + _FIXED.size > len(buf):
            raise IntegrityError(f"{at}: truncated", part="node")
        kind, mode, mtime_ns = _FIXED.unpack_from(buf, pos)
        pos += _FIXED.size
        if kind not in (KIND_FILE, KIND_DIR):
            raise IntegrityError(f"{at}: unknown kind {kind}", part="node")
        if mode & ~0o7777:
            raise IntegrityError(f"{at}: mode {mode:#o} holds more than permission bits",
                                 part="node")
        size, pos = read_uvarint(buf, pos, at, "node")
        if size > len(buf) - pos:
            raise IntegrityError(f"{at}: size {size} beyond the data", part="node")
        if kind == KIND_DIR and size:
            raise IntegrityError(f"{at}: a directory with {size} bytes of data", part="node")
        if kind == KIND_FILE:
            files.add(path)
        out.append(NodeFile(path, kind, mode, mtime_ns, bytes(buf[pos : pos + size])))
        pos += size
    if pos != len(buf):
        raise IntegrityError(f"{where}: {len(buf) - pos} bytes after the last entry",
                             part="node")
    return out
