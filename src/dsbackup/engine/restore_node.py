"""Writing a node's own files (docs/FORMAT.md §11.2) into a restored Kubo repository, before
its datastores are opened: only into a missing or empty directory unless the restore
overwrites, every path walked under the target without following symlinks, each file
written to a temp file, fsynced and renamed."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbackup.archive.node import NodeFile
from dsbackup.diskspace import is_no_space, no_space_message
from dsbackup.errors import DatastoreError, RestoreError
from dsbackup.filemodes import process_umask
from dsbackup.storage.tempfiles import fsync_dir

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from dsbackup.archive.reader import ArchiveReader


def restore_node(reader: ArchiveReader, target: Any, mode: str, jpath: Path | None,
                 ) -> tuple[int, str | None]:
    """Write the archive's node files (docs/FORMAT.md §11.2) before a ``kubo:`` target is
    opened: into a missing or empty repository directory (or one holding only node files of
    this archive: a restore cut short), or over an existing repository's with mode
    ``overwrite``; never otherwise. Returns (files written, why none were, or None)."""
    files = reader.node_files()
    if not files:
        return 0, None
    from dsbackup.datastores.registry import detect_scheme, parse_uri

    count = sum(not f.is_dir for f in files)
    if not isinstance(target, (str, os.PathLike)):
        return 0, (f"the archive's {count} node files (config, keystore/ ...) were not "
                   "restored: the target is an opened datastore, not a kubo: URI; only "
                   "records were")
    scheme, loc, _ = parse_uri(os.fspath(target))
    scheme = scheme or (detect_scheme(loc) if loc and Path(loc).exists() else None)
    if scheme != "kubo" or not loc:
        return 0, (f"the archive's {count} node files (config, keystore/ ...) were not "
                   "restored: the target is not a kubo: repository; only records were")
    root = Path(loc).absolute()
    if jpath is not None and jpath.exists():
        return 0, None  # a resumed restore: the node files were written before it began
    if not (is_empty_dir(root) or holds_only(root, files) or mode == "overwrite"):
        if _in_place(root, files):
            return 0, None  # a rerun after the node files were written: nothing to say
        return 0, (f"{root} already holds a repository: its config, keystore/ and other node "
                   f"files were kept ({count} in the archive; --overwrite replaces them)")
    refuse_outside_mounts(root, files)
    try:
        _remove_stale_temps(root)  # of a node restore killed while writing a file
        kept = None
        if not (is_empty_dir(root) or holds_only(root, files)):  # --overwrite of a repo
            kept = set_keys_aside(root, files)
        try:
            return write_node_files(root, files), kept
        except BaseException:
            if kept is not None:  # the error that follows does not say where the keys went
                log.warning("%s", kept.replace(_DONE, _FAILED, 1))
            raise
    except OSError as exc:
        if not is_no_space(exc):
            raise
        raise DatastoreError(no_space_message(root, None, what="free some space and rerun "
                                              "the same restore")) from None


_DONE = "--overwrite made it the archived node"
_FAILED = "--overwrite failed while making it the archived node (rerun it)"


def _private_key(config: bytes) -> object:
    """Identity.PrivKey of a Kubo config (None when there is none or it is no JSON)."""
    try:
        ident = json.loads(config).get("Identity")
    except (ValueError, AttributeError):
        return None
    return ident.get("PrivKey") if isinstance(ident, dict) else None


def set_keys_aside(root: Path, files: list[NodeFile]) -> str | None:
    """Before ``restore --overwrite`` makes the repository `root` the archived node: move the
    private keys it would lose — keystore/ files the archive lacks or holds other bytes for,
    and a config whose Identity.PrivKey differs from the archive's (copied) — into a new
    ``root/dsbackup-kept-keys-<UTC time>/``. The node then has exactly the archive's keys,
    and none is destroyed. Returns the note naming them (the summary's ``note:`` line,
    ``node_note`` in --json), or None when there was nothing to keep."""
    archived = {f.path: f.data for f in files if not f.is_dir}
    keys: list[str] = []
    ks = root / "keystore"
    if ks.is_dir() and not ks.is_symlink():
        for entry in sorted(os.scandir(ks), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                data = Path(entry.path).read_bytes()
            except OSError:
                data = None
            if archived.get(b"keystore/" + os.fsencode(entry.name)) != data:
                keys.append(entry.name)
    config = None
    cpath = root / "config"
    if b"config" in archived and cpath.is_file() and not cpath.is_symlink():
        config = cpath.read_bytes()
        old = _private_key(config)
        if old is None or old == _private_key(archived[b"config"]):
            config = None
    if not keys and config is None:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = root / f"dsbackup-kept-keys-{stamp}"
    n = 1
    while True:
        try:
            dest.mkdir(0o700)
            break
        except FileExistsError:
            n += 1
            dest = root / f"dsbackup-kept-keys-{stamp}-{n}"
    if keys:
        (dest / "keystore").mkdir(0o700)
        for name in keys:
            os.rename(ks / name, dest / "keystore" / name)
        fsync_dir(ks)
        fsync_dir(dest / "keystore")
    if config is not None:
        fd = os.open(dest / "config", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, config)
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(dest)
    fsync_dir(root)
    what = []
    if keys:
        what.append(f"{len(keys)} keystore key{'s' if len(keys) > 1 else ''} the archive "
                    f"lacks or holds other bytes for ({', '.join(keys[:5])}"
                    f"{', ...' if len(keys) > 5 else ''})")
    if config is not None:
        what.append("its former config, whose Identity.PrivKey differs from the archive's")
    return (f"{root}: {_DONE}; so as not to destroy private keys, "
            f"{' and '.join(what)} {'were' if len(keys) + (config is not None) > 1 else 'was'} "
            f"set aside in {dest} (move a key back into keystore/ to use it again)")


def _spec_mount_paths(spec_bytes: bytes) -> list[tuple[str, str]]:
    """(mountpoint, path) of every flatfs/levelds store a ``datastore_spec`` names."""
    try:
        spec = json.loads(spec_bytes)
    except ValueError:
        return []  # Kubo cannot open it either; opening the kubo: target names it
    out: list[tuple[str, str]] = []

    def walk(node: object, mountpoint: str) -> None:
        if isinstance(node, dict):
            mp = node.get("mountpoint")
            mountpoint = mp if isinstance(mp, str) else mountpoint
            path = node.get("path")
            if node.get("type") in ("flatfs", "levelds") and isinstance(path, str):
                out.append((mountpoint, path))
            for v in node.values():
                walk(v, mountpoint)
        elif isinstance(node, list):
            for v in node:
                walk(v, mountpoint)

    walk(spec, "/")
    return out


def _leaves(root: Path, path: str) -> bool:
    """True when a store at `path` (datastore_spec's, relative to `root` unless absolute, as
    Kubo joins it) lies outside `root`, as written and once symlinks are resolved: an
    absolute path that reaches the target through a symlink (``/data/ipfs/blocks`` for
    ``kubo:~/.ipfs``, a link to ``/data/ipfs``, or the other way round) is inside; so is a
    relative ``blocks`` that is a link to another disk, as before."""
    full = os.path.join(os.fspath(root), path)
    return all(os.path.commonpath([f(full), f(root)]) != f(root)
               for f in (os.path.normpath, os.path.realpath))


def refuse_outside_mounts(root: Path, files: list[NodeFile]) -> None:
    """Refuse (RestoreError, exit 2, nothing written) node files whose ``datastore_spec``
    puts a store outside the target directory (an absolute path, or ``..``): the records
    would then be written there, outside the target, into whatever directory it names (a
    hostile archive: any directory; a node whose blocks lived on another disk: that disk's
    live store). Allowed when the target's own ``datastore_spec`` already names that path
    (the user made that repository)."""
    spec = next((f for f in files if f.path == b"datastore_spec" and not f.is_dir), None)
    if spec is None:
        return
    try:
        own = {p for _, p in _spec_mount_paths((root / "datastore_spec").read_bytes())}
    except OSError:
        own = set()
    for mountpoint, path in _spec_mount_paths(spec.data):
        if _leaves(root, path) and path not in own:
            raise RestoreError(
                f"{root}: the archive's datastore_spec puts the {mountpoint} store at "
                f"{path!r}, outside the target directory; a restore writes only under its "
                "target, so nothing was written (to restore this node, make a repository "
                "whose own datastore_spec names that path, e.g. ipfs init with the same "
                "Datastore.Spec, and restore into it with --overwrite)")


def _in_place(root: Path, files: list[NodeFile]) -> bool:
    """True when every regular file of `files` is under `root` with the same content."""
    for f in files:
        if not f.is_dir:
            p = root / os.fsdecode(f.path)
            try:
                if p.is_symlink() or p.read_bytes() != f.data:
                    return False
            except OSError:
                return False
    return True


def is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


# write_node_files' temp file: ".<name>.dsbackup-tmp-<12 hex digits>"
_TEMP_NAME = re.compile(rb"\..+\.dsbackup-tmp-[0-9a-f]{12}", re.DOTALL)


def holds_only(path: Path, files: list[NodeFile]) -> bool:
    """True when every entry under `path` is one of `files` or the temp file of one being
    written (a node restore cut short, by a kill too)."""
    if not path.is_dir():
        return False
    known = {f.path for f in files}
    for dirpath, dirnames, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        for name in dirnames + filenames:
            if name in filenames and _TEMP_NAME.fullmatch(os.fsencode(name)):
                continue
            p = os.fsencode(name if rel == "." else os.path.join(rel, name))
            if p not in known:
                return False
    return True


def _remove_stale_temps(root: Path) -> None:
    """Remove the temp files a killed node restore left under `root` (never following a
    symlinked directory)."""
    if not root.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if _TEMP_NAME.fullmatch(os.fsencode(name)):
                p = os.path.join(dirpath, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    os.unlink(p)


def write_node_files(root: Path, files: list[NodeFile], *, umask: int | None = None) -> int:
    """Write `files` (decoded and checked) under `root`, created if missing. Every path is
    walked component by component from `root` without following symlinks (a symlink in the
    way is refused); each file is written to a temp file, fsynced and renamed over its name;
    modes are ``mode & 0o777 & ~umask``; directories get their modes last. Returns the number
    of regular files written."""
    if umask is None:
        umask = process_umask()
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
            tmp = b".%s.dsbackup-tmp-%s" % (name[:100], os.urandom(6).hex().encode())
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
    fsync_dir(root.parent)
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
