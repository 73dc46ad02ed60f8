"""Parent chains of incremental archives (docs/FORMAT.md §10).

An incremental archive's manifest names its parent (`parent`: fingerprint, file name, index
XXH3); index entries flagged FLAG_PARENT hold no member and refer to a chunk of the parent by
its seq. The parent may itself be incremental, so a reference is followed down the chain until
an archive that stores the chunk. Every hop checks that both entries describe the same chunk
(record count, payload length and XXH3, key digest, first and last key), and the payload read
at the end is checked against them, so a wrong or altered parent is detected.

Parents are found by name next to the archive, then in the given directories (and, for a
grandparent, next to the top archive too); when the named file is missing or is another
archive, the directories are searched for an archive with the expected fingerprint (a
fingerprint fixes every chunk's payload digest and seq, so any archive carrying it holds the
referenced chunks). Full backups of the same data share a fingerprint ("twins"), so candidates
are ranked by content identity (:func:`parent_rank`): the very archive the child references
(same index digest) first, then a twin that has what the child needs (its key catalog).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbackup._plain import Frozen
from dsbackup.errors import (
    ArchiveError,
    IntegrityError,
    KeyRequiredError,
    MissingParentError,
    WrongKeyError,
)
from dsbackup.storage import as_location, identity, is_file, is_stream, list_archives

if TYPE_CHECKING:
    from dsbackup.archive.reader import ArchiveReader

MAX_CHAIN = 4096


class ParentRef(Frozen):
    """The `parent` object of an incremental archive's manifest; `path` is a hint: the
    parent's path relative to the archive's directory."""

    __slots__ = ("fingerprint", "name", "index_xxh3", "path")
    fingerprint: str
    name: str
    index_xxh3: str | None
    path: str | None

    def __init__(self, fingerprint: str, name: str, index_xxh3: str | None = None,
                 path: str | None = None) -> None:
        self._set(fingerprint, name, index_xxh3, path)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str) -> ParentRef | None:
        p = manifest.get("parent")
        if p is None:
            return None
        if isinstance(p, str):  # a bare fingerprint: found by searching only
            p = {"fingerprint": p, "name": ""}
        fp = p.get("fingerprint") if isinstance(p, dict) else None
        name = p.get("name", "") if isinstance(p, dict) else None
        if not isinstance(fp, str) or len(fp) != 32 or not isinstance(name, str) or (
                "/" in name or name in (".", "..")):
            raise IntegrityError(f"{where}: manifest has an invalid parent {p!r}",
                                 part="manifest")
        try:
            bytes.fromhex(fp)
        except ValueError:
            raise IntegrityError(f"{where}: parent fingerprint {fp!r} is not hex",
                                 part="manifest") from None
        ix = p.get("index_xxh3")
        hint = p.get("path")
        return cls(fp, name, ix if isinstance(ix, str) else None,
                   hint if isinstance(hint, str) and hint else None)

    def to_manifest(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "name": self.name,
                "index_xxh3": self.index_xxh3, "path": self.path}


def index_digest(reader: ArchiveReader) -> str:
    """The archive's identity beside its fingerprint: XXH3-64 of its index member (hex)."""
    return f"{reader.trailer.index_xxh3:016x}"


def _open_if_archive(path: Path, opener: Callable[[Path], ArchiveReader]
                     ) -> ArchiveReader | str:
    """The opened archive, or why it is none (for the message naming a candidate)."""
    try:
        return opener(path)
    except (ArchiveError, OSError) as exc:
        if getattr(exc, "errno", None) in (errno.EMFILE, errno.ENFILE):
            raise  # too many files open here: says nothing of the candidate
        if isinstance(exc, WrongKeyError):  # encrypted under another passphrase or key
            return "wrong passphrase or key for it"
        if isinstance(exc, KeyRequiredError):
            return "encrypted, and no key was given"
        return "not a readable archive"


def _fingerprint(reader: ArchiveReader) -> str | None:
    try:
        return reader.summary.get("fingerprint")
    except IntegrityError:
        return None


def parent_rank(ref: ParentRef, needs_catalog: bool, name: str, fingerprint: str | None,
                index_xxh3: str, has_catalog: bool) -> int | None:
    """How well an archive serves as the parent `ref` names (lower is better), None when it
    cannot serve: 0 the very archive (fingerprint, index digest and name), 1 a byte-identical
    index under another name, 2 a twin with the same fingerprint that has what the child needs
    (a key catalog when the child has one), 3 a twin without the catalog the child needs (its
    chunks serve a restore; listing or consolidating then fails with MissingParentError)."""
    if fingerprint != ref.fingerprint:
        return None
    if ref.index_xxh3 is None or index_xxh3 == ref.index_xxh3:
        return 0 if name == ref.name else 1
    return 3 if needs_catalog and not has_catalog else 2


def _rank(ref: ParentRef, needs_catalog: bool, r: ArchiveReader) -> int | None:
    return parent_rank(ref, needs_catalog, r.path.name, _fingerprint(r), index_digest(r),
                       r.index.catalog_count > 0)


def _own_dir(loc: Any) -> list[Any]:
    """The directory (or S3 prefix) an archive lies in; none for one read from ``-``."""
    return [] if is_stream(loc) else [loc.parent]


def _unique_dirs(dirs: list[Any]) -> list[Any]:
    out: list[Any] = []
    seen: set[str] = set()
    for d in dirs:
        key = identity(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _is_file(cand: Any) -> bool:
    """Whether a named candidate is a file; a name no file can have (longer than the
    filesystem allows: the manifest naming it is untrusted) is not one."""
    try:
        return is_file(cand)
    except OSError:
        if isinstance(cand, Path):  # a local name; an S3 error stays an error
            return False
        raise


def find_parent(ref: ParentRef, child: Path, search_dirs: list[Path],
                opener: Callable[[Path], ArchiveReader], *,
                needs_catalog: bool = False) -> ArchiveReader:
    """Open the archive `ref` names, or raise MissingParentError naming it.

    `child`'s directory is searched first, then `search_dirs`; `opener` opens a candidate
    (ArchiveReader: this module never imports reader.py, which imports it); `needs_catalog`:
    the child has a key catalog, so a twin without one is the last choice (see
    :func:`parent_rank`)."""
    dirs = _unique_dirs(_own_dir(child) + list(search_dirs))
    mismatched: list[str] = []
    seen: set[str] = {identity(child)}
    best: tuple[int, ArchiveReader] | None = None

    def consider(cand: Any, named: bool) -> int | None:
        nonlocal best
        key = identity(cand)
        if key in seen or (named and not _is_file(cand)):
            return None
        seen.add(key)
        r = _open_if_archive(cand, opener)
        if isinstance(r, str):
            if named:
                mismatched.append(f"{cand} ({r})")
            return None
        rank = _rank(ref, needs_catalog, r)
        if rank is None:
            if named:
                mismatched.append(f"{cand} (fingerprint {_fingerprint(r)})")
            r.close()
        elif best is None or rank < best[0]:
            if best is not None:
                best[1].close()
            best = (rank, r)
        else:
            r.close()
        return rank

    try:
        named = [d / ref.name for d in dirs] if ref.name else []
        if ref.path and ref.name and Path(ref.path).name == ref.name:
            named += [d / ref.path for d in _own_dir(child)]
        for cand in named:
            if consider(cand, True) == 0:
                return best[1]  # type: ignore[index]
        # the named file is missing, another archive or a twin: look for the very archive
        if best is None or best[0] > 1:
            for d in dirs:
                try:
                    cands = list_archives(d)  # files in a directory, objects under a prefix
                except (ArchiveError, OSError):
                    continue
                for cand in cands:
                    if consider(cand, False) == 1:
                        return best[1]  # type: ignore[index]
    except BaseException:
        if best is not None:
            best[1].close()
        raise
    if best is not None:
        return best[1]
    what = f"parent archive {ref.name or '(unnamed)'} (fingerprint {ref.fingerprint})"
    where = ", ".join(map(str, dirs))
    if mismatched:
        raise MissingParentError(
            f"{child}: {what} was altered or replaced: {'; '.join(mismatched)}; no other "
            f"archive with that fingerprint in {where}")
    if not dirs:  # read from standard input: no directory of its own to look in
        raise MissingParentError(
            f"{child}: {what} is missing: an archive read from standard input has no "
            "directory to find its parents in (give theirs with --parent-dir)")
    raise MissingParentError(
        f"{child}: {what} is missing: not found in {where} (give its directory with "
        "--parent-dir)")


class ParentChain:
    """The opened ancestors of an archive: ``levels[0]`` is its parent, ``levels[1]`` the
    parent's parent, and so on. Raises MissingParentError when one cannot be found.
    Ancestors are opened with ``type(reader)``, the reader's own class."""

    def __init__(self, reader: ArchiveReader, search_dirs: list[Path] | None = None) -> None:
        self.reader = reader
        self.levels: list[ArchiveReader] = []
        # every ancestor is looked for beside its child, beside the top archive, then in dirs
        dirs = _unique_dirs(_own_dir(reader.path)
                            + [as_location(d) for d in (search_dirs or [])])
        seen = {_fingerprint(reader)}
        cur = reader
        try:
            while True:
                ref = ParentRef.from_manifest(cur.manifest, str(cur.path))
                if ref is None:
                    break
                if ref.fingerprint in seen or len(self.levels) >= MAX_CHAIN:
                    raise IntegrityError(f"{cur.path}: parent chain loops or is longer than "
                                         f"{MAX_CHAIN} archives", part="manifest")
                parent = find_parent(ref, cur.path, dirs, type(reader),
                                     needs_catalog=cur.index.catalog_count > 0)
                self.levels.append(parent)
                seen.add(ref.fingerprint)
                cur = parent
        except BaseException:
            self.close()
            raise

    @classmethod
    def of_levels(cls, reader: ArchiveReader, levels: list[ArchiveReader]) -> ParentChain:
        """A chain over ancestors already opened (they stay owned by the caller)."""
        chain = cls.__new__(cls)
        chain.reader = reader
        chain.levels = list(levels)
        return chain

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.levels]

    def require_catalogs(self) -> None:
        """Raise MissingParentError when the archive has a key catalog but an ancestor that
        holds some of its chunks has none (a twin made without --include-metadata). An
        ancestor without chunks, or one its child refers to no chunk of (an incremental with
        --include-metadata of a parent without a catalog stores every chunk), holds none of
        them: such archives were refused by verify, ls and consolidate, though whole."""
        above = self.reader
        for p in self.levels:
            if (above.index.catalog_count and not p.index.catalog_count and p.chunk_count
                    and _refers_to_parent(above)):
                raise MissingParentError(catalog_missing_message(above.path, p.path))
            above = p

    def locate(self, i: int) -> tuple[ArchiveReader, int]:
        """(archive, seq) storing chunk i of the top archive, checked hop by hop."""
        r = self.reader
        e = r.entry(i)
        seq = i
        depth = 0
        while e.in_parent:
            if depth >= len(self.levels):
                raise IntegrityError(f"{r.path}: chunk {seq} refers to a parent, but the "
                                     "archive has none", chunk=seq)
            p = self.levels[depth]
            ps = e.offset
            if ps >= p.chunk_count:
                raise MissingParentError(
                    f"{r.path}: chunk {seq} {e.key_range} refers to chunk {ps} of parent "
                    f"{p.path}, which has only {p.chunk_count} chunks (wrong parent)")
            pe = p.entry(ps)
            if (pe.records, pe.payload_len, pe.payload_xxh3, pe.keys_xxh3, pe.first_key,
                    pe.last_key) != (e.records, e.payload_len, e.payload_xxh3, e.keys_xxh3,
                                     e.first_key, e.last_key):
                raise MissingParentError(
                    f"{r.path}: chunk {seq} {e.key_range} refers to chunk {ps} of parent "
                    f"{p.path}, which holds other data (altered or wrong parent)")
            r, e, seq = p, pe, ps
            depth += 1
        return r, seq

    def close(self) -> None:
        for r in self.levels:
            r.close()
        self.levels = []


def _refers_to_parent(r: ArchiveReader) -> bool:
    """Whether any chunk of `r` is a reference to its parent (its index's flags)."""
    return any(refs for _, _, refs, _ in r.index.totals())


def catalog_missing_message(child: Path, parent: Path) -> str:
    return (f"{child}: its key catalog continues in parent {parent}, which has none (an "
            "archive of the same data made without --include-metadata was found in place of "
            "the one referenced); put the referenced parent back, or give --parent-dir")
