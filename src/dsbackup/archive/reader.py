"""Archive reader: O(1) open through the trailer, random access to any chunk, all checked."""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from dsbackup._ext.checksum import xxh3_64
from dsbackup.archive import crypto
from dsbackup.archive import format as fmt
from dsbackup.archive.buffers import KEEP_MAX, Taker, ThreadBuffers, grown
from dsbackup.archive.chunkcodec import decode_zstd_chunk
from dsbackup.archive.epochs import epoch_at, resumed_runs
from dsbackup.archive.index import FLAG_PARENT, ChunkEntry, Index
from dsbackup.archive.member import decode_member, inflate_sealed_body, sealed_pieces
from dsbackup.archive.node import NodeFile, decode_node
from dsbackup.errors import (
    ArchiveError,
    ConfigError,
    IntegrityError,
    KeyRequiredError,
    MissingParentError,
    UnsupportedArchive,
    WrongKeyError,
)
from dsbackup.storage import (
    S3Location,
    Source,
    as_location,
    identity,
    is_remote,
    is_stream,
    open_source,
)

# chunks whose index entries check_stored_members holds as Python objects at a time
STORED_BATCH = 4096
_MEMBER, _PAYLOAD = 0, 1  # slots of the reader's per-thread buffers

if TYPE_CHECKING:
    from dsbackup.archive.chain import ParentChain
    from dsbackup.archive.pagedindex import PagedIndex


class ArchiveReader:
    """Read a dsbackup archive. Thread-safe for concurrent chunk reads (pread, no shared cursor).

    `path`: a location (a local path, ``s3://BUCKET/KEY``, ``-``; dsbackup.storage) or an
    opened storage Source (the quick check of bytes an upload sent)."""

    def __init__(self, path: str | os.PathLike[str] | S3Location | Source, *,
                 parent_dirs: list[str | os.PathLike[str]] | None = None,
                 key: crypto.KeyMaterial | None = None, locked_ok: bool = False) -> None:
        """`key`: for an encrypted archive (docs/FORMAT.md §11.4); default: the key of
        ``crypto.using_key``. KeyRequiredError without one, WrongKeyError when it does not
        unwrap the data key (both exit 2). `locked_ok`: an encrypted archive without a key
        opens with only its public parts (trailer, key_header; `locked` is True)."""
        if hasattr(path, "read") and hasattr(path, "xxh3"):
            source: Source | None = path  # type: ignore[assignment]
            path = source.location  # type: ignore[union-attr]
        else:
            source = None
        self.path = as_location(path)  # a Path for a local archive, as before
        self.key = key
        self.cipher: crypto.ArchiveCipher | None = None
        self.key_header: dict[str, Any] | None = None
        self.base = 0  # the key header's length: the manifest starts there
        self.locked = False
        self._manifest: dict[str, Any] | None = None
        self._manifest_error: IntegrityError | None = None
        self._summary: dict[str, Any] | None = None
        self._node: list[NodeFile] | None = None
        self._runs: list[tuple[int, int]] | None = None  # resumed runs (encrypted, paged)
        # incremental archives: where to look for parents besides this archive's directory
        self.parent_dirs = [as_location(d) for d in (parent_dirs or [])]
        for d in self.parent_dirs:
            if is_stream(d):
                raise ConfigError("--parent-dir cannot be '-': parents are found by listing a "
                                  "directory or an s3:// prefix")
            if not is_remote(d) and not d.is_dir():
                raise ConfigError(f"parent directory {d} (--parent-dir) "
                                  f"{'is not a directory' if d.exists() else 'does not exist'}")
        self._chain: ParentChain | None = None
        self._chain_lock = threading.Lock()
        # each thread's chunk member and decoded payload, reused (archive.buffers)
        self._buffers = ThreadBuffers(2)
        # one buffer for index page members, whichever thread loads a page (under the lock):
        # per thread, the threads that happen to meet a page boundary would each keep one
        self._page_buf: memoryview | None = None
        self._page_lock = threading.Lock()
        self.reused_payload: Taker = self._buffers.taker(_PAYLOAD)
        # the IO boundary: every byte is read through the source (file, object, stdin)
        self._src: Source | None = source if source is not None else open_source(self.path)
        try:
            self.size = self._src.size
            tail = self.pread(max(0, self.size - fmt.TRAILER_SIZE), min(self.size, fmt.TRAILER_SIZE))
            try:
                self.trailer = fmt.Trailer.decode(tail, self.size)
            except IntegrityError as exc:
                head = self.pread_once(0, min(2, self.size))
                if not b"\x1f\x8b".startswith(head):
                    raise ArchiveError(f"{self.path}: not a gzip file (and not a dsbackup "
                                       "archive)") from None
                raise IntegrityError(f"{self.path}: {exc}", part="trailer") from None
            except UnsupportedArchive as exc:  # another version or an unsupported feature
                raise UnsupportedArchive(f"{self.path}: {exc}") from None
            t = self.trailer
            self.version = t.version  # every member must carry it (§11.1)
            self.flags = t.flags
            if not t.encrypted:
                crypto.refuse_plain(identity(self.path), str(self.path))
            else:
                self.key_header = self._read_key_header()
                candidates = [key] if key is not None else crypto.key_candidates()
                if not candidates and locked_ok:
                    self.locked = True
                    return
                if not candidates:
                    raise KeyRequiredError(f"{self.path}: {crypto.MISSING_KEY}")
                for i, k in enumerate(candidates):  # several only from a scheduler's keyring
                    try:
                        self.cipher = crypto.open_archive_key(self.key_header, k, self.version,
                                                              str(self.path))
                        self.key = k
                        break
                    except WrongKeyError:
                        if i == len(candidates) - 1:
                            raise
            raw = self.pread(t.index_offset, t.index_length)
            if xxh3_64(raw) != t.index_xxh3:
                raise IntegrityError(f"{self.path}: index member checksum mismatch",
                                     part="index")
            _, data = decode_member(raw, f"{self.path}: index", expected_type=fmt.TYPE_INDEX,
                                    expected_name=fmt.INDEX_NAME, part="index",
                                    version=self.version, flags=self.flags)
            data = self._open(fmt.TYPE_INDEX, 0, data, f"{self.path}: index", part="index")
            self.index: Index | PagedIndex
            if self.flags & fmt.FLAG_PAGED:  # the root only; pages on demand (§11.3)
                from dsbackup.archive.pagedindex import PagedIndex

                self.index = PagedIndex(data, self._read_page, base=self.base,
                                        index_offset=t.index_offset, where=str(self.path),
                                        page_epoch=None if self.cipher is None
                                        else self._page_epoch)
            else:
                self.index = Index(data, self.version)
            if self.index.chunk_count != t.chunk_count:
                raise IntegrityError(
                    f"{self.path}: index lists {self.index.chunk_count} chunks, trailer "
                    f"{t.chunk_count}", part="index")
            self.manifest_end = self.base + self.index.manifest_length
            if not 0 < self.index.manifest_length <= t.index_offset - self.base:
                raise IntegrityError(f"{self.path}: index gives an impossible manifest length",
                                     part="index")
        except BaseException:
            src, self._src = self._src, None
            src.close()
            raise

    # -- encryption (docs/FORMAT.md §11.4) ----------------------------------------------------

    def _read_key_header(self) -> dict[str, Any]:
        """The plaintext key header at offset 0 (no key needed)."""
        where = f"{self.path}: key header"
        head = self.pread_once(0, min(self.size, fmt.SUBFIELD_OFFSET + fmt.DATA_SUBLEN))
        try:
            sub = fmt.parse_member_head(head + b"\0" * 8, where)
        except IntegrityError as exc:
            exc.part = "key"
            raise
        if sub.member_type != fmt.TYPE_KEY or sub.data_len > fmt.MAX_KEY_HEADER:
            raise IntegrityError(f"{where}: the first member is not a key header",
                                 part="key")
        length = fmt.key_header_length(sub.data_len)
        if length > self.trailer.index_offset:
            raise IntegrityError(f"{where}: runs past the index", part="key")
        _, data = decode_member(self.pread_once(0, length), where, expected_type=fmt.TYPE_KEY,
                                expected_name=fmt.KEY_NAME, part="key",
                                version=self.version, flags=self.flags)
        self.base = length
        return crypto.parse_key_header(data, where)

    @property
    def encrypted(self) -> bool:
        return self.cipher is not None

    @property
    def codec(self) -> str:
        """The chunks' codec: ``gzip`` or ``zstd`` (flag bit 2, docs/FORMAT.md §11.6)."""
        return "zstd" if self.flags & fmt.FLAG_ZSTD else "gzip"

    @property
    def paged(self) -> bool:
        return bool(self.flags & fmt.FLAG_PAGED)

    def _read_page(self, page: int, offset: int, length: int, member_xxh3: int) -> memoryview:
        """Index page `page`'s data (docs/FORMAT.md §11.3): its member read with one pread,
        checked against the root's member XXH3 and by its own header, decrypted."""
        where = f"{self.path}: index page {page}"
        read_into = getattr(self._src, "read_into", None)
        if read_into is None or not (length >= 0 and 0 <= offset <= self.size - length):
            raw: bytes | memoryview = self.pread_once(offset, length)
            return self._page_data(page, raw, member_xxh3, where)
        with self._page_lock:  # the member in the reader's page buffer, decoded to new bytes
            if length > KEEP_MAX:
                raw = memoryview(bytearray(length))
            else:
                self._page_buf = grown(self._page_buf, length)
                raw = self._page_buf[:length]
            read_into(offset, raw)
            return self._page_data(page, raw, member_xxh3, where)

    def _page_data(self, page: int, raw: bytes | memoryview, member_xxh3: int,
                   where: str) -> memoryview:
        if xxh3_64(raw) != member_xxh3:
            raise IntegrityError(f"{where}: member checksum mismatch", part="index")
        _, data = decode_member(raw, where, expected_type=fmt.TYPE_PAGE,
                                expected_name=fmt.page_name(page), part="index",
                                version=self.version, flags=self.flags)
        epoch = 0 if self.cipher is None else self._page_epoch(page)
        return self._open(fmt.TYPE_PAGE, page, data, where, part="index", epoch=epoch)

    def _page_epoch(self, page: int) -> int:
        """The epoch index page `page` of an encrypted archive was sealed under: that of the
        run that wrote its first chunk (dsbackup.archive.epochs; 0 unless resumed)."""
        if self._runs is None:
            self._runs = resumed_runs(self.summary, str(self.path))
        return epoch_at(self._runs, page * self.index.page_entries)  # type: ignore[union-attr]

    def _open(self, mtype: int, seq: int, data: memoryview, where: str, *,
              chunk: int | None = None, part: str | None = None,
              epoch: int = 0) -> memoryview:
        """A member's data: decrypted when the archive is encrypted. The single members
        (manifest, node, index or root, summary) are sealed under epoch 0 (§11.4)."""
        if self.cipher is None:
            return data
        return memoryview(self.cipher.open(mtype, seq, data, where, chunk=chunk, part=part,
                                           epoch=epoch))

    # -- raw access ------------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise IntegrityError(
                f"{self.path}: read of {length} bytes at {offset} lies outside the "
                f"{self.size}-byte file")
        return self._src.read(offset, length)

    def file_identity(self) -> str | None:
        """The archive file's identity (LocalSource.identity) as it is now, through the open
        descriptor; None for an archive that is not a local file (S3, standard input)."""
        identity = getattr(self._src, "identity", None)
        return identity() if identity is not None else None

    def still_at_its_path(self) -> bool | None:
        """Whether the archive's location still holds the archive this reader opened (the
        source's ``still_at_location``); None where that cannot be told (standard input)."""
        check = getattr(self._src, "still_at_location", None)
        return check() if check is not None else None

    def pread_once(self, offset: int, length: int) -> bytes:
        """A member read once, apart from what the readers read next (the key header, the
        manifest, the node member, an index page): an S3 archive fetches just its bytes
        rather than the 8 MiB block around it (``read_once``); a file reads it as pread."""
        once = getattr(self._src, "read_once", None)
        if once is None:
            return self.pread(offset, length)
        if offset < 0 or length < 0 or offset + length > self.size:
            raise IntegrityError(
                f"{self.path}: read of {length} bytes at {offset} lies outside the "
                f"{self.size}-byte file")
        return once(offset, length)

    def plan_reads(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Tell the source the (offset, length) of the members about to be read, in order,
        pulled as it goes: an S3 archive then fetches just those (its sparse fetch, docs/
        STORAGE.md "Reading"); a local file or a spooled stream has no use for it."""
        plan = getattr(self._src, "plan", None)
        if plan is not None:
            plan(ranges)

    def close(self) -> None:
        if getattr(self, "_chain", None) is not None:
            self._chain.close()
            self._chain = None
        src, self._src = getattr(self, "_src", None), None
        if src is not None:
            src.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- JSON entries ----------------------------------------------------------------------

    def _json_member(self, offset: int, length: int, expected_xxh3: int, mtype: int,
                     name: bytes, part: str) -> dict[str, Any]:
        raw = self.pread_once(offset, length)
        if xxh3_64(raw) != expected_xxh3:
            raise IntegrityError(f"{self.path}: {part} member checksum mismatch", part=part)
        try:  # the 16 MiB limit (§9) from the subfield, before anything is inflated
            declared = fmt.parse_member_head(raw, part).data_len
        except IntegrityError:
            declared = 0  # decode_member says what is wrong, naming the part
        if declared > fmt.MAX_JSON_BYTES + crypto.TAG_BYTES:
            raise IntegrityError(f"{self.path}: {part} is larger than 16 MiB", part=part)
        sub, data = decode_member(raw, f"{self.path}: {part}", expected_type=mtype,
                                  expected_name=name, part=part, version=self.version,
                                  flags=self.flags)
        data = self._open(mtype, 0, data, f"{self.path}: {part}", part=part)
        if len(data) > fmt.MAX_JSON_BYTES:
            raise IntegrityError(f"{self.path}: {part} is larger than 16 MiB", part=part)
        try:
            obj = json.loads(bytes(data))
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise IntegrityError(f"{self.path}: {part} is not valid JSON: {exc}",
                                 part=part) from None
        if not isinstance(obj, dict):
            raise IntegrityError(f"{self.path}: {part} is not a JSON object", part=part)
        return obj

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            if self._manifest_error is not None:  # read once: asked again for every chunk
                raise copy.copy(self._manifest_error) from None
            try:
                self._manifest = self._read_manifest()
            except IntegrityError as exc:
                self._manifest_error = copy.copy(exc)  # no traceback: no buffer kept
                raise
        return self._manifest

    def _read_manifest(self) -> dict[str, Any]:
        m = self._json_member(self.base, self.index.manifest_length, self.index.manifest_xxh3,
                              fmt.TYPE_MANIFEST, fmt.MANIFEST_NAME, "manifest")
        if m.get("format") != "dsbackup" or m.get("version") != self.version:
            raise IntegrityError(f"{self.path}: manifest names format "
                                 f"{m.get('format')!r} version {m.get('version')!r}",
                                 part="manifest")
        return m

    @property
    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            t = self.trailer
            self._summary = self._json_member(t.summary_offset, t.summary_length,
                                              t.summary_xxh3, fmt.TYPE_SUMMARY,
                                              fmt.SUMMARY_NAME, "summary")
        return self._summary

    @property
    def fingerprint(self) -> str:
        """The summary's `fingerprint` (docs/FORMAT.md §7: 32 lowercase hex digits); an
        archive without one is damage (a child would name a parent no reader can find)."""
        fp = self.summary.get("fingerprint")
        if not (isinstance(fp, str) and len(fp) == 32
                and all(c in "0123456789abcdef" for c in fp)):
            raise IntegrityError(f"{self.path}: summary has no valid fingerprint "
                                 f"({str(fp)[:40]!r}; 32 hex digits expected)", part="summary")
        return fp

    # -- the node's own files (docs/FORMAT.md §11.2) ----------------------------------------

    @property
    def has_node(self) -> bool:
        return self.index.node_length > 0

    def read_node_member(self) -> bytes:
        """The node member's raw bytes (range checked: right after the manifest)."""
        off, length = self.index.node_offset, self.index.node_length
        if not (off == self.manifest_end and length > fmt.SUBFIELD_OFFSET
                and off + length <= self.trailer.index_offset):
            raise IntegrityError(f"{self.path}: node member range {off}+{length} is not "
                                 "between the manifest and the chunks", part="node")
        return self.pread_once(off, length)

    def node_data(self) -> memoryview:
        """The node member's data after the member checks (CRC, sizes, data XXH3, name,
        version); the entries are not parsed (node_files does)."""
        raw = self.read_node_member()
        where = f"{self.path}: node member"
        try:
            sub = fmt.parse_member_head(raw, where)
        except IntegrityError as exc:
            exc.part = "node"
            raise
        if sub.data_len > fmt.MAX_JSON_BYTES + crypto.TAG_BYTES:  # before inflating anything
            raise IntegrityError(f"{where}: declares {sub.data_len} bytes, over the 16 MiB "
                                 "limit", part="node")
        _, data = decode_member(raw, where, expected_type=fmt.TYPE_NODE,
                                expected_name=fmt.NODE_NAME, part="node", version=self.version,
                                flags=self.flags)
        return self._open(fmt.TYPE_NODE, 0, data, where, part="node")

    def node_files(self) -> list[NodeFile]:
        """Every entry of the node member after every check (empty when there is none);
        IntegrityError naming the node member when it is damaged or hostile."""
        if self._node is None:
            if not self.has_node:
                return []
            self._node = decode_node(self.node_data(), f"{self.path}: node member")
        return self._node

    # -- parents (incremental archives, docs/FORMAT.md §10) ----------------------------------

    @property
    def is_incremental(self) -> bool:
        return self.manifest.get("parent") is not None

    @property
    def parents_opened(self) -> ParentChain | None:
        """The ancestors if already opened (open_parents), else None: never opens them."""
        return self._chain

    def open_parents(self) -> ParentChain | None:
        """Find, open and check every ancestor (MissingParentError names a missing one);
        None for a full backup. Done lazily on the first referenced chunk otherwise."""
        if self._chain is None and self.is_incremental:
            from dsbackup.archive.chain import ParentChain

            with self._chain_lock:  # readers are shared by decoding threads
                if self._chain is None:
                    with crypto.using_key(self.key):  # parents: the same passphrase or key
                        self._chain = ParentChain(self, self.parent_dirs)
        return self._chain

    def locate(self, i: int) -> tuple[ArchiveReader, int]:
        """(archive, seq) that stores chunk i: this archive, or one in its parent chain."""
        if not self.entry(i).in_parent:
            return self, i
        chain = self.open_parents()
        if chain is None:
            raise IntegrityError(f"{self.path}: chunk {i} refers to a parent, but the manifest "
                                 "names none", chunk=i)
        return chain.locate(i)

    # -- chunks ----------------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        return self.index.chunk_count

    def entry(self, i: int) -> ChunkEntry:
        return self.index.entry(i)

    def _check_member_range(self, i: int, offset: int, length: int, what: str) -> None:
        if not (self.manifest_end <= offset and length > fmt.SUBFIELD_OFFSET
                and offset + length <= self.trailer.index_offset):
            raise IntegrityError(
                f"{self.path}: {what} {i}: member range {offset}+{length} lies outside the "
                f"chunk area", chunk=i)

    def read_member(self, i: int) -> bytes:
        """The raw bytes of chunk i's member, checked against the index's member XXH3."""
        if self.entry(i).in_parent:
            holder, seq = self.locate(i)
            return holder.read_member(seq)
        return self._checked_member(i, catalog=False, keep=True)

    def decode_chunk_member(self, i: int, raw: bytes | memoryview, *, gzip_crc: bool = True,
                            into: Taker | None = None) -> memoryview:
        """Inflate and check a chunk member read by read_member (whose member XXH3 it
        trusts); return the payload. ``gzip_crc=False`` (restore): an encrypted member's
        CRC-32 of its ciphertext is not recomputed (``member.sealed_pieces``). `into`: where
        the payload is decoded (``into(n)``: a writable buffer of n bytes, archive.buffers;
        the payload is a view of it), default a new bytes object."""
        e = self.entry(i)
        if e.in_parent:
            holder, seq = self.locate(i)  # checks every hop describes this same chunk
            return holder.decode_chunk_member(seq, raw, gzip_crc=gzip_crc, into=into)
        where = f"{self.path}: chunk {i} {e.key_range}"
        if self.flags & fmt.FLAG_ZSTD:  # by the codec (§11.6): archive.chunkcodec
            return decode_zstd_chunk(self, i, raw, e, where, gzip_crc, into)
        if self.cipher is not None:
            return self._open_sealed(fmt.TYPE_CHUNK, i, raw, where, fmt.chunk_name(i),
                                     e.payload_len, e.payload_xxh3, e.epoch, gzip_crc, into)
        sub, payload = decode_member(raw, where, expected_type=fmt.TYPE_CHUNK,
                                     expected_name=fmt.chunk_name(i), chunk=i,
                                     version=self.version, flags=self.flags, into=into)
        if (sub.seq, sub.records, sub.data_len, sub.data_xxh3) != (
                i, e.records, e.payload_len, e.payload_xxh3):
            raise IntegrityError(
                f"{self.path}: chunk {i} {e.key_range}: member header disagrees with the index",
                chunk=i)
        return payload

    def _open_sealed(self, mtype: int, i: int, raw: bytes | memoryview, where: str,
                     name: bytes, length: int, xxh3: int, epoch: int, gzip_crc: bool = True,
                     into: Taker | None = None) -> memoryview:
        """The data of an encrypted chunk or catalog member (docs/FORMAT.md §11.4) whose raw
        bytes were checked against the index: its stored blocks checked in place, their
        ``ciphertext || tag`` authenticated and decrypted into a reused buffer, and only
        then inflated and checked against the index's `length` and `xxh3`."""
        plain = self.sealed_plaintext(mtype, i, raw, where, name, epoch, gzip_crc=gzip_crc)
        return inflate_sealed_body(plain, length, xxh3, where, chunk=i, into=into)

    def sealed_plaintext(self, mtype: int, i: int, raw: bytes | memoryview, where: str,
                         name: bytes, epoch: int, *, gzip_crc: bool = True) -> memoryview:
        """The authenticated plaintext of an encrypted member (its compressed body for a chunk
        or catalog), decrypted in place from its checked stored blocks into a buffer the
        calling thread reuses: valid until that thread's next call."""
        assert self.cipher is not None
        sub, pieces = sealed_pieces(raw, where, expected_type=mtype, expected_name=name,
                                    chunk=i, version=self.version, flags=self.flags,
                                    gzip_crc=gzip_crc)
        # the subfield holds the sealed data's length and digest (§11.4)
        if mtype == fmt.TYPE_CHUNK and (sub.seq, sub.records) != (i, 0):
            raise IntegrityError(f"{where}: member header disagrees with the index", chunk=i)
        return self.cipher.open_pieces(mtype, i, pieces, where, chunk=i, epoch=epoch)

    def read_chunk(self, i: int, *, into: Taker | None = None,
                   gzip_crc: bool = False) -> memoryview:
        """Chunk i's payload, after every check (member XXH3, CRC, sizes, payload XXH3); of an
        encrypted member, the CRC-32 of its ciphertext is left to verify (``gzip_crc``): the
        member XXH3 just checked covers the same bytes, and the tag authenticates them.
        The member is read into this thread's reused buffer; `into`: where the payload goes
        (``decode_chunk_member``), e.g. ``self.reused_payload``: this thread's reused
        buffer, the payload valid until the thread's next such read."""
        if self.entry(i).in_parent:
            holder, seq = self.locate(i)
            raw = holder._member_in_buffer(seq)
        else:
            raw = self._member_in_buffer(i)
        return self.decode_chunk_member(i, raw, gzip_crc=gzip_crc, into=into)

    def _member_in_buffer(self, i: int) -> bytes | memoryview:
        """Chunk i's member (stored here), checked against the index's member XXH3, read into
        this thread's reused buffer where the source reads into buffers (a local file)."""
        read_into = getattr(self._src, "read_into", None)
        if read_into is None:
            return self._checked_member(i, catalog=False, keep=True)
        m = self.entry(i)
        self._check_member_range(i, m.offset, m.length, "chunk")
        raw = self._buffers.take(_MEMBER, m.length)
        read_into(m.offset, raw)
        if xxh3_64(raw) != m.member_xxh3:
            raise IntegrityError(f"{self.path}: chunk {i} {m.key_range}: member checksum "
                                 "mismatch", chunk=i)
        return raw

    def check_member(self, i: int) -> int:
        """Check chunk i's member against the index's member XXH3 without keeping its bytes
        (read and hashed natively); returns its length."""
        if self.entry(i).in_parent:
            holder, seq = self.locate(i)
            return holder.check_member(seq)
        return self._checked_member(i, catalog=False, keep=False)

    def check_stored_members(self, seqs: Any, *, catalog: bool = False) -> None:
        """Chunks `seqs` (increasing, stored in this archive) checked as check_member checks
        each — its member's range and XXH3 against the index — with their entries taken from
        the index in bulk (no object per chunk); with `catalog`, their catalog members too.
        An S3 archive is told the ranges first (plan_reads). IntegrityError for the first
        that fails, naming it. Memory stays bounded at any count: the entries are taken
        STORED_BATCH at a time, for the plan as for the check."""
        import numpy as np

        seqs = np.asarray(seqs, np.int64)

        def overlapping(part: np.ndarray, offs: np.ndarray, lens: np.ndarray,
                        end: list[int]) -> tuple[np.ndarray, np.ndarray]:
            """(mask, ends): the members (in seq order) that start before an earlier one
            ends, and where that is (`end`: where the batches before ended, updated). §5 has
            them in seq order, tiling the file: entries that share bytes are a malformed
            (hostile) index, and hashing them would read the same bytes again and again."""
            starts = offs.astype(np.int64)
            stops = starts + lens.astype(np.int64)
            prev = np.concatenate(([end[0]], np.maximum.accumulate(stops)[:-1]))
            prev = np.maximum(prev, end[0])
            if stops.size:
                end[0] = max(end[0], int(stops.max()))
            return starts < prev, prev

        def batches(check: bool = True
                    ) -> Iterator[tuple[list[int], list[int], list[int], list[int]]]:
            """(seqs, offsets, lengths, member XXH3s) of up to STORED_BATCH chunks at a time,
            in order; `check`: IntegrityError for one that is itself a reference (the plan's
            ranges do not raise: the check meets it)."""
            pos, end = 0, [0]
            while pos < seqs.size:
                first, tab, _keys = self.index.block(int(seqs[pos]))
                stop = min(int(np.searchsorted(seqs, first + len(tab))), pos + STORED_BATCH)
                part = seqs[pos:stop]
                t = tab[part - first]
                refs = t["flags"] & np.uint32(FLAG_PARENT)
                if check and refs.any():
                    raise IntegrityError(f"{self.path}: chunk {int(part[np.flatnonzero(refs)[0]])}"
                                         " is a reference, not a member of this archive")
                over, ends = overlapping(part, t["offset"], t["length"], end)
                if check and over.any():
                    j = int(np.flatnonzero(over)[0])
                    raise IntegrityError(
                        f"{self.path}: chunk {int(part[j])}: its member at offset "
                        f"{int(t['offset'][j])} overlaps an earlier chunk's (ending at "
                        f"{int(ends[j])}); the index is malformed (docs/FORMAT.md §5: "
                        "members in seq order, not overlapping)", chunk=int(part[j]))
                if over.any():  # the plan's pass: such bytes are not fetched twice
                    keep = ~over
                    part, t = part[keep], t[keep]
                yield (part.tolist(), t["offset"].tolist(), t["length"].tolist(),
                       t["member_xxh3"].tolist())
                pos = stop

        def ranges() -> Iterator[tuple[int, int]]:
            for idx, offs, lens, _ in batches(False):
                for i, o, n in zip(idx, offs, lens):
                    yield o, n
                    if catalog:
                        c = self.index.catalog(i)
                        yield c.offset, c.length

        if not seqs.size:
            return
        if np.any(seqs[1:] <= seqs[:-1]):
            seqs = np.unique(seqs)  # each chunk once
        self.plan_reads(ranges())
        xxh3 = self._src.xxh3
        for idx, offs, lens, digests in batches():
            for i, o, n, d in zip(idx, offs, lens, digests):
                self._check_member_range(i, o, n, "chunk")
                if xxh3(o, n) != d:
                    e = self.entry(i)
                    raise IntegrityError(f"{self.path}: chunk {i} {e.key_range}: member "
                                         "checksum mismatch", chunk=i)
                if catalog:
                    c = self.index.catalog(i)
                    self._check_member_range(i, c.offset, c.length, "catalog")
                    if xxh3(c.offset, c.length) != c.member_xxh3:
                        raise IntegrityError(f"{self.path}: catalog {i}: member checksum "
                                             "mismatch", chunk=i)

    def catalog_holder(self, i: int) -> tuple[ArchiveReader, int]:
        """(archive, seq) holding chunk i's catalog: MissingParentError when the parent chain
        found has no catalog for it (a twin made without --include-metadata)."""
        holder, seq = self.locate(i)
        if seq >= holder.index.catalog_count:
            from dsbackup.archive.chain import catalog_missing_message

            raise MissingParentError(catalog_missing_message(self.path, holder.path))
        return holder, seq

    def check_catalog_member(self, i: int) -> int:
        """Check chunk i's catalog member like check_member; returns its length."""
        if self.entry(i).in_parent:
            holder, seq = self.catalog_holder(i)
            return holder.check_catalog_member(seq)
        return self._checked_member(i, catalog=True, keep=False)

    def read_catalog_member(self, i: int) -> bytes:
        """The raw bytes of chunk i's catalog member, checked against the index."""
        if self.entry(i).in_parent:
            holder, seq = self.catalog_holder(i)
            return holder.read_catalog_member(seq)
        return self._checked_member(i, catalog=True, keep=True)

    def _checked_member(self, i: int, *, catalog: bool, keep: bool) -> Any:
        """Chunk i's member (or its catalog's) in this file, checked against the index's member
        XXH3: its bytes when `keep`, else its length (hashed natively, no bytes kept)."""
        if catalog:
            m = self.index.catalog(i)
            where = f"catalog {i}"
        else:
            m = self.entry(i)
            where = f"chunk {i} {m.key_range}"
        self._check_member_range(i, m.offset, m.length, "catalog" if catalog else "chunk")
        if keep:
            raw = self.pread(m.offset, m.length)
            digest = xxh3_64(raw)
        else:
            digest = self._src.xxh3(m.offset, m.length)
        if digest != m.member_xxh3:
            raise IntegrityError(f"{self.path}: {where}: member checksum mismatch", chunk=i)
        return raw if keep else m.length

    def read_catalog(self, i: int) -> memoryview:
        """Chunk i's key catalog data, after every check."""
        if self.entry(i).in_parent:
            holder, seq = self.catalog_holder(i)
            return holder.read_catalog(seq)
        c = self.index.catalog(i)
        raw = self.read_catalog_member(i)
        where = f"{self.path}: catalog {i}"
        if self.cipher is not None:
            return self._open_sealed(fmt.TYPE_CATALOG, i, raw, where, fmt.catalog_name(i),
                                     c.data_len, c.data_xxh3, self.entry(i).epoch)
        sub, data = decode_member(raw, where, expected_type=fmt.TYPE_CATALOG,
                                  expected_name=fmt.catalog_name(i), chunk=i,
                                  version=self.version, flags=self.flags)
        if (sub.data_len, sub.data_xxh3) != (c.data_len, c.data_xxh3):
            raise IntegrityError(f"{self.path}: catalog {i}: header disagrees with the index",
                                 chunk=i)
        return data
