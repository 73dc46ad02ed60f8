"""A node's own files (docs/FORMAT.md §11.2): collected from a Kubo repository for the node
member of its archive, and written back into a restored repository, safely.

What a Kubo repository's node files are (docs/DATASTORES.md): every file and directory under
the repository root except the datastores' own directories (the ``path`` of each mount in
``datastore_spec``: ``blocks/``, ``datastore/``), ``repo.lock``, the daemon's ``api`` and
``gateway`` files and temporary files (names ending in ``.tmp`` or starting with ``.tmp``).
Helia keeps no such files: its identity and keychain are records of its datastore.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbackup.archive.node import KIND_DIR, KIND_FILE, MAX_NODE_BYTES, NodeFile, encode_node
from dsbackup.errors import BackupError, RestoreError

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
                full = os.path.normpath(os.path.join(os.fspath(repo), p))
                rel = os.path.relpath(full, os.fspath(repo))
                if rel != "." and not rel.startswith(".."):
                    out.add(os.fsencode(rel))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return out


def collect_kubo(repo: str | os.PathLike[str]) -> NodeSnapshot:
    """The node files of the Kubo repository `repo`: BackupError (exit 2) naming the path for
    a symlink or special file, a file that keeps changing, or more than 16 MiB in all."""
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
                                      "back up with --datastore-only")
                files.append(f)
            else:
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise BackupError(f"{e.path}: {what} in the Kubo repository: not backed up "
                                  "as a node file; remove it or back up with --datastore-only")

    try:
        walk(root, b"")
    except OSError as exc:
        raise BackupError(f"{root}: cannot read the node's files: {exc}") from None
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


def is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


def holds_only(path: Path, files: list[NodeFile]) -> bool:
    """True when every entry under `path` is one of `files` (a node restore cut short)."""
    if not path.is_dir():
        return False
    known = {f.path for f in files}
    for dirpath, dirnames, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        for name in dirnames + filenames:
            p = os.fsencode(name if rel == "." else os.path.join(rel, name))
            if p not in known:
                return False
    return True


def write_node_files(root: Path, files: list[NodeFile], *, umask: int | None = None) -> int:
    """Write `files` (decoded and checked) under `root`, created if missing. Every path is
    walked component by component from `root` without following symlinks (a symlink in the
    way is refused); each file is written to a temp file, fsynced and renamed over its name;
    modes are ``mode & 0o777 & ~umask``; directories get their modes last. Returns the number
    of regular files written."""
    if umask is None:
        umask = os.umask(0)
        os.umask(umask)
    root.mkdir(0o700, parents=True, exist_ok=True)  # it will hold the node's private key
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds: dict[bytes, int] = {b"": root_fd}
    written = 0
    try:
        for f in files:
            parent, _, name = f.path.rpartition(b"/")
            pfd = _dir_fd(root, fds, parent)
            mode = f.mode & 0o777 & ~umask
            if f.is_dir:
                _dir_fd(root, fds, f.path)
                continue
            tmp = b".%s.dsbackup-tmp-%s" % (name[:100], secrets.token_hex(6).encode())
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                view = memoryview(f.data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                os.utime(fd, ns=(f.mtime_ns, f.mtime_ns))
                os.fsync(fd)
                os.close(fd)
                fd = -1
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                try:
                    os.unlink(tmp, dir_fd=pfd)
                except OSError:
                    pass
                raise
            written += 1
        for f in reversed(files):  # deepest first: a read-only directory is set last
            if f.is_dir:
                os.fchmod(fds[f.path], f.mode & 0o777 & ~umask)
        for fd in fds.values():
            os.fsync(fd)
    except IsADirectoryError as exc:
        raise RestoreError(f"{root}: cannot write a node file over a directory: {exc}") \
            from None
    finally:
        for fd in fds.values():
            os.close(fd)
    _fsync_parent(root)
    return written


def _dir_fd(root: Path, fds: dict[bytes, int], rel: bytes) -> int:
    """An fd of directory `rel` under `root`, creating it (0700) if missing; a symlink or a
    non-directory on the way is refused (RestoreError naming it)."""
    if rel in fds:
        return fds[rel]
    parent, _, name = rel.rpartition(b"/")
    pfd = _dir_fd(root, fds, parent)
    try:
        os.mkdir(name, 0o700, dir_fd=pfd)
    except FileExistsError:
        pass
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=pfd)
    except OSError as exc:
        raise RestoreError(f"{root / os.fsdecode(rel)}: not a directory the node's files can "
                           f"be written into (a symlink or a file is in the way: {exc.strerror}"
                           "); nothing is written through it") from None
    fds[rel] = fd
    return fd


def _fsync_parent(root: Path) -> None:
    fd = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def node_snapshot(ds: Any) -> NodeSnapshot | None:
    """The node files of an opened whole-node datastore (``kubo:``), None for any other (a
    Helia repository keeps its identity as datastore records: nothing beside them)."""
    if getattr(ds, "scheme", None) == "kubo" and isinstance(getattr(ds, "repo", None), Path):
        return collect_kubo(ds.repo)
    return None


PRIVATE_KEY_WARNING = ("the archive holds the node's private key (Identity.PrivKey in config"
                       "{keystore}): anyone who can read it can act as this node; store it "
                       "safely (archive encryption is not available yet)")


def private_key_warning(node: dict[str, Any] | None, files: list[NodeFile] | None = None,
                        ) -> str | None:
    """The summary's warning when a node member holds a private key (None otherwise)."""
    if not node or not node.get("private_key"):
        return None
    keystore = any(f.path.startswith(b"keystore/") and not f.is_dir for f in files or [])
    return PRIVATE_KEY_WARNING.format(keystore=", keys in keystore/" if keystore else "")
