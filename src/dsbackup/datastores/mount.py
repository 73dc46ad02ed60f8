"""Mount datastore with go-datastore's ``mount`` semantics.

A key goes to the deepest mount whose prefix is a strict ancestor of it (``/blocks`` takes
``/blocks/X`` but not ``/blocks`` itself, which goes to ``/`` if mounted); the child sees
the key with the prefix stripped (``/X``). A key no mount takes cannot be written.

Scans and queries merge children in key order without comparing keys: the children of a
prefix ``P`` are exactly the keys in ``[P + "/", P + "0")``, so the key space splits into
segments each served by one child, visited in order. A key stored in a child outside the
range the mount routes to it (shadowed by a deeper mount) is never listed, matching what
``get`` can reach.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from dsbackup.datastores.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    BaseDatastore,
    unbatch,
)
from dsbackup.datastores.flatfs_audit import EXAMPLES, FileAudit, SkippedFiles
from dsbackup.errors import DatastoreError, NotFound
from dsbackup.keys import Key, KeyLike, key_bytes

__all__ = ["Mount", "MountDatastore"]

# The automatic chunk size of a mounted store whose mounts do not all count their records
# (Kubo's LevelDB) is taken from the mounts that count (Kubo's blocks) while the others hold at
# most SMALL_PER_COUNTED records per counted record, estimating their records as one per
# SMALL_RECORD_BYTES of their bytes (provider, pin and IPNS records are ~100-500 B): they then
# add at most SMALL_PER_COUNTED chunks per chunk of the counted records. Each such chunk costs
# ~120 us of CPU and ~800 B of archive (docs/PERFORMANCE.md, "Automatic chunk size of a Kubo
# repo"), against ~3 ms and ~0.5 MiB for a 1 MiB chunk of blocks.
SMALL_RECORD_BYTES = 128
SMALL_PER_COUNTED = 4


@dataclass(frozen=True)
class Mount:
    prefix: Key
    datastore: BaseDatastore

    @property
    def raw(self) -> bytes:
        """The prefix bytes added to child keys (empty for the root mount)."""
        return b"" if self.prefix.raw == b"/" else self.prefix.raw


@dataclass(frozen=True)
class _Segment:
    mount: Mount
    start: bytes  # child key range
    end: bytes | None


class MountDatastore(BaseDatastore):
    """Children mounted at key prefixes. Closing the mount closes the children."""

    scheme = "mount"

    def __init__(self, mounts: Sequence[tuple[KeyLike, BaseDatastore]] | Sequence[Mount], *,
                 uri: str = "", readonly: bool = False, location: str = "") -> None:
        ms = [m if isinstance(m, Mount) else Mount(Key(m[0]) if not isinstance(m[0], Key)
                                                   else m[0], m[1]) for m in mounts]
        seen = set()
        for m in ms:
            if m.prefix in seen:
                raise DatastoreError(f"two datastores mounted at {m.prefix}")
            seen.add(m.prefix)
        # Deeper prefixes first: reverse bytewise order puts /a/b before /a.
        self.mounts: list[Mount] = sorted(ms, key=lambda m: m.prefix.raw, reverse=True)
        self._root = next((m for m in self.mounts if m.prefix.raw == b"/"), None)
        self._inner = [m for m in self.mounts if m.prefix.raw != b"/"]
        super().__init__(uri or "mount:", readonly=readonly, location=location)
        self.parallel_readable = bool(uri) and all(
            m.datastore.parallel_readable for m in self.mounts)

    # -- routing -------------------------------------------------------------------------
    def lookup(self, key: bytes) -> tuple[Mount, bytes] | None:
        """The mount for a key and the key as the child sees it, or None."""
        for m in self._inner:
            p = m.prefix.raw
            if len(key) > len(p) and key[len(p)] == 0x2F and key.startswith(p):
                return m, key[len(p):]
        if self._root is not None and len(key) > 1:
            return self._root, key
        return None

    def _route(self, key: bytes, *, write: bool) -> tuple[Mount, bytes]:
        r = self.lookup(key)
        if r is None:
            if write:
                raise DatastoreError(f"no datastore mounted for key {key!r} in {self.uri}")
            raise NotFound(f"key {key!r} not found in {self.uri} (no mount)")
        return r

    def _segments(self, start: bytes, end: bytes | None) -> list[_Segment]:
        cuts = set()
        for m in self._inner:
            cuts.add(m.prefix.raw + b"/")
            cuts.add(m.prefix.raw + b"0")
        points = [start] + sorted(c for c in cuts if c > start and (end is None or c < end))
        out = []
        for i, a in enumerate(points):
            b = points[i + 1] if i + 1 < len(points) else end
            m = self._segment_mount(a)
            if m is None:
                continue
            p = m.raw
            if not p:
                out.append(_Segment(m, a, b))
            else:
                cs = a[len(p):] if a.startswith(p) else b""
                ce = b[len(p):] if b is not None and b.startswith(p) else None
                out.append(_Segment(m, cs, ce))
        return out

    def _segment_mount(self, a: bytes) -> Mount | None:
        for m in self._inner:
            if a.startswith(m.prefix.raw + b"/"):
                return m
        return self._root

    # -- primitives ----------------------------------------------------------------------
    def _get(self, key: bytes) -> bytes:
        m, k = self._route(key, write=False)
        return m.datastore._get(k)

    def _get_size(self, key: bytes) -> int:
        m, k = self._route(key, write=False)
        return m.datastore._get_size(k)

    def _validate_key(self, key: bytes) -> None:
        m, k = self._route(key, write=True)
        m.datastore._validate_key(k)

    def _put(self, key: bytes, value: bytes) -> None:
        m, k = self._route(key, write=True)
        m.datastore._check_writable()
        m.datastore._put(k, value)

    def _delete(self, key: bytes) -> None:
        r = self.lookup(key)
        if r is not None:
            r[0].datastore._check_writable()
            r[0].datastore._delete(r[1])

    def _apply_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        """One batch per child (atomic per child, not across children)."""
        groups: dict[int, tuple[Mount, list[tuple[bytes, bytes | None]]]] = {}
        for k, v in ops:
            r = self.lookup(k)
            if r is None:
                if v is None:
                    continue
                raise DatastoreError(f"no datastore mounted for key {k!r} in {self.uri}")
            groups.setdefault(id(r[0]), (r[0], []))[1].append((r[1], v))
        for m, child_ops in groups.values():
            m.datastore._check_writable()
            m.datastore._apply_batch(child_ops)

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        self._check_put_many(keys, values)
        groups: dict[int, tuple[Mount, list[bytes], list[bytes]]] = {}
        for k, v in zip(keys, values):
            m, ck = self._route(k, write=True)
            g = groups.setdefault(id(m), (m, [], []))
            g[1].append(ck)
            g[2].append(v)
        for m, ks, vs in groups.values():
            m.datastore.put_many(ks, vs)

    # -- staged writes (a restore: see FlatfsDatastore.stage_many) -----------------------
    @property
    def stages_files(self) -> bool:
        """Whether a child writes files in stage_many (a Kubo repo's flatfs ``/blocks``)."""
        return any(getattr(m.datastore, "stages_files", False) for m in self.mounts)

    def stage_many(self, keys: list[bytes], values: list[bytes]
                   ) -> list[tuple[Mount, object]]:
        """Each child's records: staged by a child that stages files, else held as
        ``(keys, values)`` until :meth:`commit_staged` puts them."""
        self._check_put_many(keys, values)
        groups: dict[int, tuple[Mount, list[bytes], list[bytes]]] = {}
        for k, v in zip(keys, values):
            m, ck = self._route(k, write=True)
            m.datastore._validate_key(ck)
            g = groups.setdefault(id(m), (m, [], []))
            g[1].append(ck)
            g[2].append(v)
        out: list[tuple[Mount, object]] = []
        for m, ks, vs in groups.values():
            if getattr(m.datastore, "stages_files", False):
                out.append((m, m.datastore.stage_many(ks, vs)))  # type: ignore[attr-defined]
            else:
                out.append((m, (ks, vs)))
        return out

    def commit_staged(self, batches: list[list[tuple[Mount, object]]]) -> None:
        """Each child's part of `batches`, in order: staged files committed, held records
        put in one put_many."""
        parts: dict[int, tuple[Mount, list[object]]] = {}
        for b in batches:
            for m, part in b:
                parts.setdefault(id(m), (m, []))[1].append(part)
        for m, ps in parts.values():
            ds = m.datastore
            if getattr(ds, "stages_files", False):
                ds.commit_staged(ps)  # type: ignore[attr-defined]
            else:
                ds.put_many([k for ks, _ in ps for k in ks],  # type: ignore[misc]
                            [v for _, vs in ps for v in vs])  # type: ignore[misc]

    def discard_staged(self) -> None:
        for m in self.mounts:
            if getattr(m.datastore, "stages_files", False):
                m.datastore.discard_staged()  # type: ignore[attr-defined]

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return unbatch(self.scan_batches(start, end, max_records=1024))

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        return unbatch(self.scan_key_sizes(start, end, max_records=1024))

    # -- fast paths ----------------------------------------------------------------------
    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        self._check_open()
        for seg in self._segments(start, end):
            p = seg.mount.raw
            for keys, vals in seg.mount.datastore.scan_batches(
                    seg.start, seg.end, max_records=max_records, max_bytes=max_bytes):
                yield ([p + k for k in keys] if p else keys), vals

    def scan_key_sizes(self, start: bytes = b"", end: bytes | None = None, *,
                       max_records: int = DEFAULT_MAX_RECORDS
                       ) -> Iterator[tuple[list[bytes], list[int]]]:
        self._check_open()
        for seg in self._segments(start, end):
            p = seg.mount.raw
            for keys, sizes in seg.mount.datastore.scan_key_sizes(
                    seg.start, seg.end, max_records=max_records):
                yield ([p + k for k in keys] if p else keys), sizes

    def seek_key(self, key: bytes) -> bytes | None:
        self._check_open()
        for seg in self._segments(key, None):
            k = seg.mount.datastore.seek_key(seg.start)
            if k is not None and (seg.end is None or k < seg.end):
                return seg.mount.raw + k
        return None

    def last_key(self) -> bytes | None:
        self._check_open()
        for seg in reversed(self._segments(b"", None)):
            ds = seg.mount.datastore
            k = ds.last_key()
            if k is None or k < seg.start:
                continue
            if seg.end is None or k < seg.end:
                return seg.mount.raw + k
            last = None  # the child's last key lies beyond this segment: scan it
            for keys, _ in ds.scan_key_sizes(seg.start, seg.end, max_records=65536):
                last = keys[-1]
            if last is not None:
                return seg.mount.raw + last
        return None

    def set_listing_stop(self, should_stop: Callable[[], bool] | None) -> None:
        """Handed to every mounted store that takes it (flatfs: FlatfsDatastore)."""
        for m in self.mounts:
            fn = getattr(m.datastore, "set_listing_stop", None)
            if fn is not None:
                fn(should_stop)

    def approx_count(self) -> int | None:
        counts = [m.datastore.approx_count() for m in self.mounts]
        self._counts = counts  # for chunk_basis (a flatfs count lists the store)
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[arg-type]

    def approx_size(self) -> int | None:
        sizes = [m.datastore.approx_size() for m in self.mounts]
        self._sizes = sizes
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]

    def chunk_basis(self) -> tuple[int, int] | None:
        """(records, bytes) of the mounts that can count, to size automatic chunks by, when
        some mount cannot count (Kubo's LevelDB) and holds few records beside them (at most
        ``SMALL_PER_COUNTED`` per counted record, estimated from its bytes); else None. Uses
        the last :meth:`approx_count` and :meth:`approx_size` (the engine calls both first).
        A mount that cannot count is weighed by the larger of its estimate and its files (a
        LevelDB's estimate is 0 while its records are still in the log). See
        docs/DATASTORES.md "Automatic chunk size of a mounted store"."""
        counts, sizes = getattr(self, "_counts", None), getattr(self, "_sizes", None)
        if counts is None or sizes is None or all(c is not None for c in counts):
            return None
        n = b = other = 0
        for m, c, s in zip(self.mounts, counts, sizes):
            if c is not None and s is not None:
                n, b = n + c, b + s
                continue
            du = getattr(m.datastore, "disk_usage", None)
            try:
                other += max(s or 0, int(du()) if du is not None else 0)
            except Exception:  # an estimate only
                other += s or 0
        if n <= 0 or b <= 0 or other > SMALL_PER_COUNTED * SMALL_RECORD_BYTES * n:
            return None
        return n, b

    def disk_usage(self) -> int:
        return sum(int(getattr(m.datastore, "disk_usage", lambda: 0)()) for m in self.mounts)

    def audit_files(self) -> FileAudit:
        """The children's unread files (children that map files to keys), paths made
        absolute."""
        audit = FileAudit()
        for m in self.mounts:
            fn = getattr(m.datastore, "audit_files", None)
            if fn is not None:
                audit.merge(fn(), os.fspath(getattr(m.datastore, "path", "")))
        return audit

    @property
    def skipped(self) -> SkippedFiles:
        """Files the children's scans could not read (see :class:`SkippedFiles`)."""
        out = SkippedFiles()
        for m in self.mounts:
            s = getattr(m.datastore, "skipped", None)
            if s is not None:
                out.count += s.count
                out.examples += s.examples[:max(0, EXAMPLES - len(out.examples))]
        return out

    def sync(self, prefix: KeyLike = "/") -> None:
        self._check_open()
        p = key_bytes(prefix)
        pk = Key.from_raw(p)
        for m in self.mounts:
            if m.prefix == pk or m.prefix.is_ancestor_of(pk) or pk.is_ancestor_of(m.prefix):
                m.datastore.sync("/")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        for m in self.mounts:
            try:
                m.datastore.close()
            except Exception as e:  # noqa: BLE001 - close every child, report the first
                errors.append(e)
        if errors:
            raise errors[0]
