"""A node's own files (docs/FORMAT.md §11.2), collected from a Kubo repository for the node
member of its archive (dsbackup.engine.restore_node writes them back).

What a Kubo repository's node files are (docs/DATASTORES.md): every file and directory under
the repository root except the datastores' own directories (the ``path`` of each mount in
``datastore_spec``: ``blocks/``, ``datastore/``), ``repo.lock``, the daemon's ``api`` and
``gateway`` files and temporary files (names ending in ``.tmp`` or starting with ``.tmp``).
Helia keeps no such files: its identity and keychain are records of its datastore.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbackup.archive.node import (
    KIND_DIR,
    KIND_FILE,
    MAX_NODE_BYTES,
    NodeFile,
    encode_node,
    path_problem,
)
from dsbackup.errors import BackupError

RUNTIME_FILES = frozenset({b"repo.lock", b"api", b"gateway"})
_READ_TRIES = 3


@dataclass(frozen=True)
class NodeSnapshot:
    """The node files of one repository, and what the manifest says of them."""

    kind: str
    files: list[NodeFile]
    data: bytes  # the node member's data

    @property
    def manifest(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": sum(not f.is_dir for f in self.files),
                "bytes": sum(len(f.data) for f in self.files),
                "private_key": holds_private_key(self.files)}


def holds_private_key(files: list[NodeFile]) -> bool:
    """True when Kubo's ``config`` has ``Identity.PrivKey`` or ``keystore/`` holds a key."""
    for f in files:
        if f.path.startswith(b"keystore/") and not f.is_dir:
            return True
        if f.path == b"config":
            try:
                ident = json.loads(f.data).get("Identity") or {}
            except (ValueError, AttributeError):
                continue
            if isinstance(ident, dict) and ident.get("PrivKey"):
                return True
    return False


def _is_temp(name: bytes) -> bool:
    return name.endswith(b".tmp") or name.startswith(b".tmp")


def datastore_paths(repo: Path, spec: dict[str, Any]) -> set[bytes]:
    """Relative paths (bytes) of the datastores a ``datastore_spec`` mounts under `repo`."""
    out: set[bytes] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            p = node.get("path")
            if isinstance(p, str) and p and node.get("type") in ("flatfs", "levelds"):
                # as written, and once symlinks are resolved: an absolute path reaching the
                # repo through a link (/home/u/.ipfs/blocks for /data/ipfs) is its store too
                full = os.path.join(os.fspath(repo), p)
                for f in (os.path.normpath, os.path.realpath):
                    rel = os.path.relpath(f(full), f(os.fspath(repo)))
                    if rel != "." and not rel.startswith(".."):
                        out.add(os.fsencode(rel))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return out


DATASTORE_ONLY = "back up with --datastore-only"


def collect_kubo(repo: str | os.PathLike[str], *, advice: str = DATASTORE_ONLY) -> NodeSnapshot:
    """The node files of the Kubo repository `repo`: BackupError (exit 2) naming the path for
    a symlink or special file, a file that keeps changing, or more than 16 MiB in all
    (`advice`: what the message offers instead)."""
    root = Path(repo).absolute()
    try:
        spec = json.loads((root / "datastore_spec").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{root}: cannot read datastore_spec: {exc}") from None
    skip = datastore_paths(root, spec)
    files: list[NodeFile] = []
    total = 0

    def walk(dirpath: Path, rel: bytes) -> None:
        nonlocal total
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for e in entries:
            name = os.fsencode(e.name)
            path = rel + name
            if path in skip or _is_temp(name) or (not rel and name in RUNTIME_FILES):
                continue
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                files.append(NodeFile(path, KIND_DIR, stat.S_IMODE(st.st_mode), st.st_mtime_ns))
                walk(Path(e.path), path + b"/")
            elif stat.S_ISREG(st.st_mode):
                f = _read_stable(Path(e.path), path)
                total += len(f.data)
                if total > MAX_NODE_BYTES - (1 << 20):
                    raise BackupError(f"{root}: the node's own files exceed 15 MiB (at "
                                      f"{e.path}); the node member holds at most 16 MiB: "
                                      f"{advice}")
                files.append(f)
            else:
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise BackupError(f"{e.path}: {what} in the Kubo repository: not a node file "
                                  f"dsbackup takes; remove it or {advice}")

    try:
        walk(root, b"")
    except OSError as exc:
        raise BackupError(f"{root}: cannot read the node's files: {exc}") from None
    for f in files:  # a name the node member cannot hold (not UTF-8, a backslash ...)
        problem = path_problem(f.path)
        if problem is not None:
            raise BackupError(f"{root / os.fsdecode(f.path)}: {problem}: cannot be kept as a "
                              f"node file; rename or remove it, or {advice}")
    return NodeSnapshot("kubo", files, encode_node(files))


def _read_stable(path: Path, rel: bytes) -> NodeFile:
    """Read a file whose size and mtime are the same before and after (at most 3 tries)."""
    for _ in range(_READ_TRIES):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            before = os.fstat(fd)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if ((before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
                and len(data) == after.st_size):
            return NodeFile(rel, KIND_FILE, stat.S_IMODE(after.st_mode), after.st_mtime_ns,
                            data)
    raise BackupError(f"{path}: changed while it was read ({_READ_TRIES} tries); stop "
                      "whatever writes it and back up again")


def node_snapshot(ds: Any) -> NodeSnapshot | None:
    """The node files of an opened whole-node datastore (``kubo:``), None for any other (a
    Helia repository keeps its identity as datastore records: nothing beside them)."""
    if getattr(ds, "scheme", None) == "kubo" and isinstance(getattr(ds, "repo", None), Path):
        return collect_kubo(ds.repo)
    return None


PRIVATE_KEY_WARNING = ("the archive holds the node's private key (Identity.PrivKey in config"
                       "{keystore}): anyone who can read it can act as this node; store it "
                       "safely, or back up with --encrypt")


def private_key_warning(node: dict[str, Any] | None, files: list[NodeFile] | None = None,
                        ) -> str | None:
    """The summary's warning when a node member holds a private key (None otherwise)."""
    if not node or not node.get("private_key"):
        return None
    keystore = any(f.path.startswith(b"keystore/") and not f.is_dir for f in files or [])
    return PRIVATE_KEY_WARNING.format(keystore=", keys in keystore/" if keystore else "")
