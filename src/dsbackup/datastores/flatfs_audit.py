"""Accounting for every file under a file-per-key store, so nothing is skipped silently.

:func:`audit_flatfs` lists a flatfs root once and counts the files a scan will not read:
wrong shard directory, invalid names, files without ``.data``, stray temp files, nested
directories, symbolic links. The temp files the real writers leave when stopped mid-write
(go-ds-flatfs's old ``put-N``/``du-N``, Helia's steno ``.<file>.tmp``), and those of this
package's own writer (a killed restore's), are not records and their readers ignore them:
they are counted in ``temp_files``, not as foreign. A shard directory is checked with one regular expression over
all its names, which captures the shard each name maps to (the common case, every name in
place, costs no per-name Python work); only a shard with a misfit is looked at name by name. The misplaced names also tell which shard
function (and whether Helia's ``B`` name prefix) would fit, for the hint in the error.

:class:`SkippedFiles` counts files that a scan listed but could not read (vanished, or an
I/O or permission error) and keeps the first few paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from dsbackup.datastores.flatfs_layout import (
    DISK_USAGE_FILE,
    EXTENSION,
    OWN_TEMP,
    README_FILE,
    SHARDING_FILE,
    TEMP_DIR,
    ShardFunc,
    is_valid_name,
)

__all__ = ["FileAudit", "SkippedFiles", "audit_flatfs", "EXAMPLES"]

EXAMPLES = 5  # paths kept for messages
_SAMPLE = 200  # misplaced names kept to guess the right shard function
_NAME_CHARS = rb"[0-9A-Z+\-_=]"
_METADATA = {SHARDING_FILE.encode(), README_FILE.encode(), DISK_USAGE_FILE.encode()}
# Temp files the real writers leave when stopped mid-write, which their readers ignore.
# go-ds-flatfs before 2020 (v0.4, ipfs/go-ds-flatfs 5b09ebf) wrote each value to
# ioutil.TempFile(<shard dir>, "put-") and the disk usage to ioutil.TempFile(<root>, "du-"),
# never removed after a crash (its decode still expects "put-" names in shard dirs).
_GO_SHARD_TEMP = re.compile(rb"put-[0-9]+")
_GO_ROOT_TEMP = re.compile(rb"du-[0-9]+")
# Helia's blockstore-fs and datastore-fs write through steno's Writer: ".<file>.tmp" beside
# <file>, renamed over it.
STENO_TEMP = re.compile(rb"\.(.+)\.tmp")


@dataclass
class FileAudit:
    """Files under a store's root that a backup would not read."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    hint: str = ""
    temp_files: int = 0  # the real writer's own leftover temp files: not records, not counted

    def add(self, path: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(path)

    def merge(self, other: FileAudit, where: str = "") -> None:
        self.count += other.count
        self.temp_files += other.temp_files
        for p in other.examples:
            if len(self.examples) < EXAMPLES:
                self.examples.append(os.path.join(where, p) if where else p)
        if other.hint and not self.hint:
            self.hint = other.hint

    def message(self, root: str, doing: str = "backed up") -> str:
        first = ", ".join(self.examples)
        text = (f"{root}: {self.count} file{'s' if self.count != 1 else ''} do not belong "
                f"to the store's layout and would not be {doing} (first: {first})")
        return f"{text}; {self.hint}" if self.hint else text


@dataclass
class SkippedFiles:
    """Files listed by a scan that could not be read (vanished or unreadable)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, path: bytes | str, error: OSError) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            why = "vanished" if isinstance(error, FileNotFoundError) else (
                error.strerror or type(error).__name__)
            self.examples.append(f"{os.fsdecode(path)} ({why})")


_PATTERNS: dict[tuple[str, int, bytes], re.Pattern[bytes]] = {}


def _shard_pattern(shard: ShardFunc, prefix: bytes) -> re.Pattern[bytes]:
    """Matches each NUL-terminated name of the layout's shape and captures the characters
    its shard directory is made of. A name it does not match (short names padded with
    ``_``, misfits) is looked at on its own; it never matches a name that is not valid."""
    key = (shard.kind, shard.param, prefix)
    pat = _PATTERNS.get(key)
    if pat is None:
        c, n, p = _NAME_CHARS, str(shard.param).encode(), re.escape(prefix)
        if shard.kind == "prefix":
            body = b"(?=" + p + b")(" + c + b"{" + n + b"})" + c + b"*"
        elif shard.kind == "suffix":
            body = p + c + b"*(" + c + b"{" + n + b"})"
        else:  # next-to-last
            body = p + c + b"*(" + c + b"{" + n + b"})" + c
        pat = _PATTERNS[key] = re.compile(
            rb"(?:^|(?<=\x00))" + body + re.escape(EXTENSION) + rb"\x00")
    return pat


def _in_place(name: bytes, shard: ShardFunc, shard_dir: bytes, prefix: bytes) -> bool:
    if not name.endswith(EXTENSION):
        return False
    stem = name[:-len(EXTENSION)]
    return (stem.startswith(prefix) and is_valid_name(stem)
            and shard.dir_of(stem) == shard_dir)


def _count_tree(path: bytes, rel: str, audit: FileAudit) -> None:
    """Every file (of any type) below ``path`` counts as foreign."""
    try:
        it = os.scandir(path)
    except (NotADirectoryError, FileNotFoundError):
        return
    with it:
        for e in it:
            name = f"{rel}/{os.fsdecode(e.name)}"
            if e.is_dir(follow_symlinks=False):
                _count_tree(e.path, name, audit)
            else:
                audit.add(name)


def audit_flatfs(root: bytes, shard: ShardFunc, *, name_prefix: bytes = b"",
                 go_layout: bool = True, clean_shards: Collection[bytes] = ()) -> FileAudit:
    """The files under a flatfs ``root`` that a scan does not read, with a hint when the
    misplaced ones fit another shard function. In a go-ds-flatfs directory ``SHARDING``,
    ``_README``, ``diskUsage.cache`` and the contents of ``.temp/`` (go-ds-flatfs's working
    files) are part of the layout. ``clean_shards``: shard directories already listed and
    found to hold only names in place (by the native listing, flatfs_fastlist.py): not
    listed again."""
    audit = FileAudit()
    misplaced: list[tuple[bytes, bytes]] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return audit
    for e in sorted(entries, key=lambda x: x.name):
        rel = os.fsdecode(e.name)
        if e.is_dir(follow_symlinks=False):
            if e.name == TEMP_DIR.encode() and go_layout:
                continue
            if e.name[:1] == b".":
                _count_tree(e.path, rel, audit)
                continue
            if e.name not in clean_shards:
                _audit_shard(e.path, e.name, shard, name_prefix, audit, misplaced, go_layout)
        elif go_layout and _GO_ROOT_TEMP.fullmatch(e.name) and e.is_file(follow_symlinks=False):
            audit.temp_files += 1
        elif not (go_layout and e.name in _METADATA):
            audit.add(rel)
    if misplaced:
        audit.hint = _hint(misplaced, shard, name_prefix, os.fsdecode(root))
    return audit


def _is_writer_temp(name: bytes, shard: ShardFunc, shard_dir: bytes, prefix: bytes,
                    go_layout: bool) -> bool:
    """A temp file the real writer of this layout leaves in a shard directory: go-ds-flatfs's
    old ``put-N``, or steno's ``.<file>.tmp`` of a file that belongs here (Helia), or our own
    restore's ``.temp-XXXXXXXX`` (Helia layout; go layout: in ``.temp/``, never looked at)."""
    if go_layout:
        return _GO_SHARD_TEMP.fullmatch(name) is not None
    if OWN_TEMP.fullmatch(name):
        return True
    m = STENO_TEMP.fullmatch(name)
    return m is not None and _in_place(m.group(1), shard, shard_dir, prefix)


def _has_dir(path: bytes) -> bool:
    """A directory among the entries of ``path`` (named like a record or not: its files
    are not records). Asked only of a shard the native listing flagged (it flags one)."""
    with os.scandir(path) as it:
        return any(e.is_dir(follow_symlinks=False) for e in it)


def _audit_shard(path: bytes, shard_dir: bytes, shard: ShardFunc, prefix: bytes,
                 audit: FileAudit, misplaced: list[tuple[bytes, bytes]],
                 go_layout: bool = True) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    if not names:
        return
    joined = b"\x00".join(names) + b"\x00"
    found = _shard_pattern(shard, prefix).findall(joined)
    if len(found) == len(names) and set(found) == {shard_dir} and not _has_dir(path):
        return  # every name is in place: no per-name work
    with os.scandir(path) as it:
        for e in it:
            rel = f"{os.fsdecode(shard_dir)}/{os.fsdecode(e.name)}"
            if e.is_dir(follow_symlinks=False):
                _count_tree(e.path, rel, audit)
            elif (e.is_file(follow_symlinks=False)
                  and _is_writer_temp(e.name, shard, shard_dir, prefix, go_layout)):
                audit.temp_files += 1
            elif not _in_place(e.name, shard, shard_dir, prefix):  # a scan reads it (a
                # symlink with a record's name too: through the link, or counted unreadable)
                audit.add(rel)
                stem = e.name[:-len(EXTENSION)] if e.name.endswith(EXTENSION) else b""
                if stem and is_valid_name(stem) and len(misplaced) < _SAMPLE:
                    misplaced.append((shard_dir, stem))


_CANDIDATES = [ShardFunc(k, n) for k in ("suffix", "next-to-last", "prefix") for n in (2, 3, 1, 4)]


def _hint(misplaced: list[tuple[bytes, bytes]], shard: ShardFunc, prefix: bytes,
          root: str) -> str:
    """Which layout the misplaced names fit, as advice naming the URI to use."""
    parent = os.path.dirname(root.rstrip("/"))
    repo = parent if os.path.basename(root.rstrip("/")) == "blocks" else "REPO"
    helia = all(s.startswith(b"B") for _, s in misplaced)
    for cand in _CANDIDATES:
        if str(cand) == str(shard) and not prefix:
            continue
        if all(cand.dir_of(stem) == d for d, stem in misplaced):
            spec = f"{cand.kind}/{cand.param}"
            if helia and cand.kind == "suffix" and cand.param == 2:
                return ("they are in the shard their last two characters give: this looks "
                        f"like Helia's blockstore-fs, use helia:{repo} (helia:REPO, the "
                        f"directory holding blocks/) or flatfs:{root}?shard=suffix/2")
            if prefix and all(not s.startswith(prefix) for _, s in misplaced):
                return (f"their names lack the '{prefix.decode()}' prefix and fit shard "
                        f"{spec}: this looks like a go-ds-flatfs directory, use "
                        f"flatfs:{root}?shard={spec} or kubo:REPO")
            return f"they fit the shard function {spec}: use flatfs:{root}?shard={spec}"
    return ""
