"""Streaming archive writer (docs/FORMAT.md): members in order into a storage sink (a temp file
fsynced and renamed, or an S3 multipart upload completed: dsbackup.storage)."""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dsbackup import codec as codecs
from dsbackup._ext.checksum import Xxh3_128, stored_tar_member, xxh3_64
from dsbackup._ext.compress import Body as NativeBody
from dsbackup._ext.compress import deflate_body, tar_header
from dsbackup.archive import format as fmt
from dsbackup.archive.crypto import KeyMaterial, PendingKey, sealed_size
from dsbackup.archive.index import FLAG_PARENT, CatalogEntry, ChunkEntry, IndexBuilder
from dsbackup.archive.pages import PagedIndexBuilder
from dsbackup.errors import ArchiveError, Cancelled
from dsbackup.storage import S3Location, open_sink
from dsbackup.storage.resumestate import FINISHING, WRITING

if TYPE_CHECKING:  # a --resume's (engine/resume.py): not every backup's start-up
    from dsbackup.archive.resume import ResumeState

_U64 = struct.Struct("<Q")


class Body(Protocol):
    """A compressed tar entry body (see dsbackup._ext.compress.Body)."""

    data: bytes
    crc32: int
    size: int
    input_len: int
    # zstd chunk bodies (docs/FORMAT.md §11.6): the payload's length, the frame's XXH3-64 and
    # dsbackup.codec.BODY_* (deflate bodies may lack them: input_len, 0, BODY_DEFLATE)
    content_len: int
    xxh3: int
    codec: int


class ChunkLike(Protocol):
    """What the writer needs of a finished chunk (dsbackup._ext.framing.Chunk fits)."""

    record_count: int
    first_key: bytes
    last_key: bytes
    keys_xxh3: int
    payload_xxh3: int
    raw_bytes: int
    body: Body


@dataclass(frozen=True)
class WrittenArchive:
    path: Path | S3Location | str
    size: int
    chunks: int
    records: int
    raw_bytes: int
    payload_bytes: int
    chunk_bytes: int
    fingerprint: str
    summary: dict[str, Any]


class ArchiveWriter:
    """Write one archive. Use as a context manager: an exception aborts and removes the temp file.

    ``add_chunk`` must be called in key order; chunk seq numbers are assigned here. A file
    already at `path` is never replaced unless ``overwrite``: the finished archive is linked
    into place (atomic, fails when the name exists) and ArchiveExistsError is raised.

    ``node``: the data of a node member (dsbackup.archive.node.encode_node); an archive with
    one is written in format version 2 (docs/FORMAT.md §11.2), every other in version 1.

    ``key``: write an encrypted archive (version 2, flag bit 0, docs/FORMAT.md §11.4) with a
    new data key wrapped under it; ``kdf``: reuse a parent's scrypt salt and parameters.

    ``page_entries``: write a paged index (version 2, flag bit 1, docs/FORMAT.md §11.3) with
    this many chunks per page; None (default) writes the version-1 single index. Callers
    decide with dsbackup.archive.pages.choose_page_entries.

    ``resume``: go on writing a killed backup's temp file (docs/FORMAT.md §11.5): its kept
    members as dsbackup.archive.resume.rescan found them, in ``sink`` (a
    dsbackup.storage.local.ResumedSink, already cut to ``resume.end``); the manifest and node
    member are the file's, not written again, and so are its format version, flags, key
    header and paged index (``key`` and ``page_entries`` are not used). An encrypted file goes
    on with its own data key, sealing under the resumed run's epoch (§11.4).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | S3Location,
        *,
        manifest: dict[str, Any],
        level: int = 1,
        created: float | None = None,
        parent_fingerprint: str | None = None,
        overwrite: bool = False,
        node: bytes | None = None,
        key: KeyMaterial | None = None,
        kdf: dict[str, Any] | None = None,
        page_entries: int | None = None,
        resume: ResumeState | None = None,
        sink: Any = None,
        codec: str = codecs.GZIP,
        keep_when_cancelled: bool = False,
    ) -> None:
        self.overwrite = overwrite
        self._keep_when_cancelled = keep_when_cancelled  # (a `backup --resume` run's)
        if resume is not None and sink is None:
            raise ValueError("resume needs its sink")
        # the IO boundary: a local temp file, an S3 multipart upload or stdout
        self._sink = sink if sink is not None else open_sink(path, overwrite=overwrite)
        try:  # a signal before the head's own try below must not leave the temp file
            self.final = self._sink.final
            self.tmp = self._sink.tmp  # a local temp file's path (None elsewhere)
            self.removed_leftovers = self._sink.removed_leftovers
            self.level = level
            self.created = int(created if created is not None else time.time())
            self._pos = 0
            self._index: IndexBuilder | PagedIndexBuilder = (
                IndexBuilder() if page_entries is None else PagedIndexBuilder(page_entries))
            self._page_bytes = 0  # index page members (not counted in chunk_bytes)
            self._fingerprint = Xxh3_128()
            self._records = 0
            self._raw_bytes = 0
            self._payload_bytes = 0
            self._closed = False
            self._prev_last: bytes | None = None
            # incremental archives: the fingerprint also covers the parent's (docs/FORMAT.md §7)
            self.parent_fingerprint = parent_fingerprint
            self.referenced_chunks = 0
            encrypted = key is not None
            zstd = codecs.check_codec(codec) == codecs.ZSTD
            self.version = (fmt.FORMAT_VERSION if node is None and not encrypted and not zstd
                            and page_entries is None else fmt.NODE_FORMAT_VERSION)
            self.flags = ((fmt.FLAG_ENCRYPTED if encrypted else 0)
                          | (fmt.FLAG_PAGED if page_entries is not None else 0)
                          | (fmt.FLAG_ZSTD if zstd else 0))
            self._cipher = None
            self._sealed_catalog: bool | None = None
            # encrypted: the sealed chunk's and catalog's buffers, reused from chunk to chunk
            self._out = [bytearray(), bytearray()]
            self._frame_into: Any = None  # dsbackup._ext.seal.frame_into, loaded with the key
            self._base = 0  # length of the key header (the manifest follows it)
            self._pending_key: PendingKey | None = None  # the data key, being made (encrypted)
            self._head: tuple[bytes, bytes | None] | None = None  # manifest and node, till then
            self._node_offset = self._node_length = 0
            self._epoch = 0  # the nonce epoch of chunks, catalogs and pages this run seals (§11.4)
        except BaseException:
            if resume is None:  # (a resumed file is the user's: kept)
                self._sink.abort()
            raise
        if resume is not None:
            self._resume(resume)
            return
        try:
            if node is not None and len(node) > fmt.MAX_JSON_BYTES:
                raise ArchiveError(f"{self.final}: the node's files take {len(node)} bytes, "
                                   "over the 16 MiB limit of the node member")
            data = json.dumps({**manifest, "version": self.version}, sort_keys=True,
                              indent=1).encode()
            if len(data) > fmt.MAX_JSON_BYTES:
                raise ArchiveError(f"{self.final}: manifest too large")
            if key is not None:
                self._mark_sealing(WRITING)  # a later --resume needs it (resumestate)
                self._sync_sooner()
                # the data key is made in a thread while the caller starts its scan; the key
                # header, manifest and node member are written once it is there (_head_out)
                self._head = (data, node)
                self._pending_key = PendingKey(key, self.version, kdf)
            else:
                self._write_head(data, node)
        except BaseException:
            self.abort()  # no temp file left behind
            raise

    def _write_head(self, manifest: bytes, node: bytes | None) -> None:
        self._manifest_length, self._manifest_xxh3 = self._write_data_member(
            fmt.TYPE_MANIFEST, fmt.MANIFEST_NAME, manifest)[1:]
        if node is not None:  # right after the manifest (§11.2)
            self._node_offset, self._node_length, _ = self._write_data_member(
                fmt.TYPE_NODE, fmt.NODE_NAME, node)

    def _head_out(self) -> None:
        """An encrypted archive's first members, once its data key is made: the key header
        (plaintext, stored blocks, §11.4), then the manifest and node member, sealed."""
        pending, self._pending_key = self._pending_key, None
        if pending is None:
            return
        header, self._cipher = pending.result()
        self._load_framing()
        body = deflate_body(header, 0)
        sub = fmt.data_subfield(fmt.TYPE_KEY, len(header), xxh3_64(header), self.version,
                                self.flags)
        self._base = self._write_member(sub, fmt.KEY_NAME, self.created, body)[1]
        data, node = self._head
        self._head = None
        self._write_head(data, node)

    def _resume(self, st: ResumeState) -> None:
        """Take over the kept members of a killed backup's temp file."""
        self.version, self.flags = st.version, st.flags
        self._pos = st.end
        self._base, self._cipher, self._epoch = st.base, st.cipher, st.epoch
        if self._cipher is not None:
            self._load_framing()
            self._sync_sooner()
        self._manifest_length, self._manifest_xxh3 = st.manifest_length, st.manifest_xxh3
        self._node_offset, self._node_length = st.node_offset, st.node_length
        self._index = st.index  # the kept chunks (and pages) already in it
        self._page_bytes = st.page_bytes
        if st.next_seq and self._cipher is not None:
            self._sealed_catalog = st.catalog
        self._fingerprint = st.fingerprint  # over the kept chunks' payload XXH3s
        self._records, self._payload_bytes = st.records, st.payload_bytes
        self._raw_bytes = st.raw_bytes
        self._prev_last = st.last_key
        self.referenced_chunks = st.referenced  # an incremental's, below the cut

    # -- low level -------------------------------------------------------------------------

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        self._pos += self._sink.write(pieces)

    def _write_member(self, subfield: bytes, name: bytes, mtime: int, body: Body,
                      ) -> tuple[int, int, int]:
        # gzip head with the subfield, the header's stored block | body | CRC-32 and ISIZE;
        # and the member's XXH3, in one native call (one member per chunk)
        head, tail, mxxh = stored_tar_member(subfield, tar_header(name, body.input_len, mtime),
                                             body.data, body.crc32, body.size)
        offset = self._pos
        self._write([head, body.data, tail])
        return offset, self._pos - offset, mxxh

    def _write_data_member(self, mtype: int, name: bytes, data: bytes, level: int | None = None,
                           seq: int = 0, epoch: int = 0) -> tuple[int, int, int]:
        if self._cipher is not None:  # ciphertext || tag in stored blocks (§11.4)
            body, digest = self._cipher.seal_stored(mtype, seq, data, epoch)
            sub = fmt.data_subfield(mtype, body.input_len, digest, self.version, self.flags)
            return self._write_member(sub, name, self.created, body)
        body = deflate_body(data, self.level if level is None else level)
        sub = fmt.data_subfield(mtype, len(data), xxh3_64(data), self.version, self.flags)
        return self._write_member(sub, name, self.created, body)

    # -- public ----------------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        return self._index.count

    @property
    def bytes_written(self) -> int:
        return self._pos

    def add_chunk(self, chunk: ChunkLike, catalog_body: Body | None = None,
                  catalog_xxh3: int | None = None) -> ChunkEntry | None:
        """Append a compressed chunk (and its catalog member when the archive has a catalog);
        its index entry."""
        if self._closed:
            raise ArchiveError("archive writer is closed")
        if self._pending_key is not None:
            self._head_out()
        if self._prev_last is not None and chunk.first_key <= self._prev_last:
            raise ArchiveError(
                f"chunk {self._index.count}: first key {chunk.first_key!r} does not follow "
                f"{self._prev_last!r} (chunks must arrive in key order)")
        if self._cipher is not None:
            return self._add_sealed(chunk, catalog_body, catalog_xxh3)
        seq = self._index.count
        body = chunk.body
        plen = self._payload_len(seq, body)
        # a zstd chunk's subfield describes its frame, the index its payload (§11.6)
        sub = fmt.chunk_subfield(seq, chunk.record_count, body.input_len,
                                 body.xxh3 if self.zstd else chunk.payload_xxh3,
                                 self.version, self.flags)
        off, length, mxxh = self._write_member(sub, fmt.chunk_name(seq), 0, body)
        entry = ChunkEntry(seq, off, length, plen, chunk.record_count,
                           chunk.payload_xxh3, mxxh, chunk.keys_xxh3,
                           bytes(chunk.first_key), bytes(chunk.last_key))
        self._index.add_chunk(entry)
        if catalog_body is not None:
            if catalog_xxh3 is None:
                raise ValueError("catalog_xxh3 is required with catalog_body")
            csub = fmt.data_subfield(fmt.TYPE_CATALOG, catalog_body.input_len,
                                     catalog_xxh3, self.version, self.flags)
            coff, clen, cxxh = self._write_member(csub, fmt.catalog_name(seq), 0, catalog_body)
            self._index.add_catalog(
                CatalogEntry(coff, clen, cxxh, catalog_body.input_len, catalog_xxh3))
        elif self._index.catalog_count:
            raise ArchiveError(f"chunk {seq}: missing catalog")
        self._page_out()
        self._prev_last = entry.last_key
        self._fingerprint.update(_U64.pack(chunk.payload_xxh3))
        self._records += chunk.record_count
        self._raw_bytes += chunk.raw_bytes
        self._payload_bytes += plen
        return entry

    @property
    def zstd(self) -> bool:
        """Chunks are zstd frames (flag bit 2, docs/FORMAT.md §11.6)."""
        return bool(self.flags & fmt.FLAG_ZSTD)

    @property
    def codec(self) -> str:
        return codecs.ZSTD if self.zstd else codecs.GZIP

    def _payload_len(self, seq: int, body: Body) -> int:
        """The payload length of a chunk body, after checking that the body is in this
        archive's codec (a body of another codec would make a wrong archive)."""
        have = getattr(body, "codec", codecs.BODY_DEFLATE)
        want = (codecs.BODY_DEFLATE if not self.zstd else codecs.BODY_ZSTD_FRAME
                if self._cipher is not None else codecs.BODY_ZSTD_STORED)
        if have == codecs.BODY_DEFLATE_SEALED and self._cipher is not None and not self.zstd:
            have = want  # sealed: its missing CRC-32 is never read (a plain archive refuses it)
        if have != want:
            raise ArchiveError(f"chunk {seq}: compressed as body kind {have}, this "
                               f"{self.codec} archive needs kind {want} (internal error)")
        return getattr(body, "content_len", body.input_len) if self.zstd else body.input_len

    # -- encrypted archives (docs/FORMAT.md §11.4) ---------------------------------------------

    def _load_framing(self) -> None:
        from dsbackup._ext.seal import frame_into  # loaded with the key (cipher.prepare)

        self._frame_into = frame_into

    def _add_sealed(self, chunk: ChunkLike, catalog_body: Body | None,
                    catalog_xxh3: int | None) -> ChunkEntry:
        """The encrypted add_chunk: the chunk (and its catalog) encrypted into a reused buffer
        as the stored blocks of its member, framed and written, all in this thread and before
        this returns: a worker's slot is not held (BodyView.hold), no body is copied. (A
        sealing thread for the framing cost more than it saved: docs/PERFORMANCE.md,
        "Encryption cost: framing in the writer's thread".)"""
        seq = self._index.count
        has_catalog = catalog_body is not None
        if has_catalog and catalog_xxh3 is None:
            raise ValueError("catalog_xxh3 is required with catalog_body")
        if self._sealed_catalog is not None and has_catalog != self._sealed_catalog:
            raise ArchiveError(f"chunk {seq}: catalog presence changed")
        self._sealed_catalog = has_catalog
        body = chunk.body
        plen = self._payload_len(seq, body)
        sbody, sxxh = self._seal_body(fmt.TYPE_CHUNK, seq, body.data, 0)
        sub = fmt.chunk_subfield(seq, 0, sbody.input_len, sxxh, self.version, self.flags)
        off, length, mxxh = self._write_member(sub, fmt.chunk_name(seq), 0, sbody)
        entry = ChunkEntry(seq, off, length, plen, chunk.record_count, chunk.payload_xxh3,
                           mxxh, chunk.keys_xxh3, bytes(chunk.first_key),
                           bytes(chunk.last_key), 0, self._epoch)
        self._index.add_chunk(entry)
        if catalog_body is not None:
            cbody, cs = self._seal_body(fmt.TYPE_CATALOG, seq, catalog_body.data, 1)
            csub = fmt.data_subfield(fmt.TYPE_CATALOG, cbody.input_len, cs, self.version,
                                     self.flags)
            coff, clen, cmx = self._write_member(csub, fmt.catalog_name(seq), 0, cbody)
            self._index.add_catalog(CatalogEntry(coff, clen, cmx, catalog_body.input_len,
                                                 catalog_xxh3))
        self._page_out()
        self._prev_last = entry.last_key
        self._fingerprint.update(_U64.pack(chunk.payload_xxh3))
        self._records += chunk.record_count
        self._raw_bytes += chunk.raw_bytes
        self._payload_bytes += plen
        return entry

    def _seal_body(self, mtype: int, seq: int, data: Any, which: int) -> tuple[NativeBody, int]:
        """`data` encrypted with `cryptography`'s AES-GCM (the GIL released) into this
        writer's buffer `which` (grown when too small), then framed natively (stored-block
        headers, tag, padding, CRC-32 and XXH3, while the ciphertext is in this core's
        cache): the member's body and the XXH3 of its sealed bytes."""
        n = len(memoryview(data).cast("B"))
        buf = self._out[which]
        need = sealed_size(n)
        if len(buf) < need:  # a new one: the old one may still be exported
            buf = self._out[which] = bytearray(need + (need >> 3))
        tag = self._cipher.encrypt_stored(mtype, seq, data, buf, self._epoch)
        written, crc, size, input_len, sxxh = self._frame_into(tag, n, buf)
        return NativeBody(memoryview(buf)[:written], crc, size, input_len), sxxh

    # -- paged index (docs/FORMAT.md §11.3): a page after the chunks it describes ---------------

    def _page_out(self, final: bool = False) -> None:
        """Write the current index page when it is full (or, at the end, not empty)."""
        ix = self._index
        if not isinstance(ix, PagedIndexBuilder) or not ix.page_ready(final):
            return
        number, data = ix.take_page()
        off, length, mxxh = self._write_data_member(fmt.TYPE_PAGE, fmt.page_name(number), data,
                                                    0, seq=number, epoch=self._epoch)
        ix.page_written(off, length, mxxh)
        self._page_bytes += length

    @property
    def paged(self) -> bool:
        return isinstance(self._index, PagedIndexBuilder)

    # -- the sealing state a --resume of an encrypted temp file needs (docs/FORMAT.md §11.4) ---

    def _mark_sealing(self, state: bytes) -> None:
        mark = getattr(self._sink, "set_sealing", None)  # local temp files only
        if mark is not None:
            mark(state)

    def _sync_sooner(self) -> None:
        """Early syncs of the file more often (local temp files): `_finishing`'s fsync is on
        the backup's critical path and then has less to wait for (docs/PERFORMANCE.md)."""
        sooner = getattr(self._sink, "sync_sooner", None)
        if sooner is not None:
            sooner()

    def _finishing(self) -> None:
        """Before the index and the summary are sealed (under epoch 0, once in the archive's
        life): make `finishing` durable on the temp file, so that no resume of it ever seals
        them again; where that cannot be recorded, remove the sealing state instead (the file
        is then not resumable)."""
        sink = self._sink
        if getattr(sink, "set_sealing", None) is None:
            return
        if sink.set_sealing(FINISHING, durable=True) or sink.forget_sealing():
            return
        raise ArchiveError(f"{self.final}: cannot record on the temporary file that its index "
                           "is being written (user extended attribute)")

    def add_reference(self, parent_seq: int, entry: ChunkEntry, raw_bytes: int, *,
                      catalog: bool = False) -> ChunkEntry:
        """Append a chunk stored in the parent chain: ``entry`` is the parent's index entry
        (seq ``parent_seq``); nothing is written but the index entry (docs/FORMAT.md §10)."""
        if self._closed:
            raise ArchiveError("archive writer is closed")
        if self.parent_fingerprint is None:
            raise ArchiveError("a chunk reference needs a parent (parent_fingerprint)")
        if self._pending_key is not None:
            self._head_out()
        if self._prev_last is not None and entry.first_key <= self._prev_last:
            raise ArchiveError(
                f"chunk {self._index.count}: first key {entry.first_key!r} does not follow "
                f"{self._prev_last!r} (chunks must arrive in key order)")
        if catalog != bool(self._index.catalog_count) and self._index.count:
            raise ArchiveError(f"chunk {self._index.count}: catalog presence changed")
        ref = ChunkEntry(self._index.count, parent_seq, 0, entry.payload_len, entry.records,
                         entry.payload_xxh3, 0, entry.keys_xxh3, entry.first_key,
                         entry.last_key, FLAG_PARENT, self._epoch)  # this run's (§11.4)
        self._index.add_chunk(ref)
        if catalog:
            self._index.add_catalog(CatalogEntry(0, 0, 0, 0, 0))
        self._page_out()
        self._prev_last = ref.last_key
        self._fingerprint.update(_U64.pack(entry.payload_xxh3))
        self._records += entry.records
        self._raw_bytes += raw_bytes
        self._payload_bytes += entry.payload_len
        self.referenced_chunks += 1
        return ref

    def add_references(self, first_parent_seq: int, parent: Any, parent_keys: Any,
                       raw_bytes: int, *, catalog: bool = False) -> int:
        """add_reference for consecutive parent chunks at once: `parent` their entries in the
        parent's index (ENTRY_DTYPE rows, seqs `first_parent_seq`...), `parent_keys` the keys
        blob they point into (a checked index block: ArchiveReader.index.block), `raw_bytes`
        their key and value bytes together. Returns how many were added."""
        n = len(parent)
        if self._closed:
            raise ArchiveError("archive writer is closed")
        if self.parent_fingerprint is None:
            raise ArchiveError("a chunk reference needs a parent (parent_fingerprint)")
        if not n:
            return 0
        if self._pending_key is not None:
            self._head_out()
        k0 = int(parent["keys_off"][0])
        first_key = bytes(parent_keys[k0:k0 + int(parent["first_len"][0])])
        if self._prev_last is not None and first_key <= self._prev_last:
            raise ArchiveError(
                f"chunk {self._index.count}: first key {first_key!r} does not follow "
                f"{self._prev_last!r} (chunks must arrive in key order)")
        if catalog != bool(self._index.catalog_count) and self._index.count:
            raise ArchiveError(f"chunk {self._index.count}: catalog presence changed")
        ix = self._index
        done = 0
        while done < n:  # a paged index: up to the end of the current page, then the page
            take = n - done if isinstance(ix, IndexBuilder) else min(n - done, ix.room())
            if take < 1:
                raise ArchiveError(f"chunk {ix.count}: the full index page was not written")
            ix.add_references(parent[done:done + take], parent_keys, first_parent_seq + done,
                              self._epoch, catalog)  # this run's epoch (§11.4)
            done += take
            self._page_out()
        e = parent[n - 1]
        k = int(e["keys_off"]) + int(e["first_len"])
        self._prev_last = bytes(parent_keys[k:k + int(e["last_len"])])
        self._fingerprint.update(parent["payload_xxh3"].astype("<u8").tobytes())
        self._records += int(parent["records"].sum(dtype="u8"))
        self._raw_bytes += raw_bytes
        self._payload_bytes += int(parent["payload_len"].sum(dtype="u8"))
        self.referenced_chunks += n
        return n

    def count_raw_bytes(self, n: int) -> None:
        """Count `n` more key and value bytes in the summary's raw_bytes, for chunks already
        in the index whose raw bytes were not known when they were added (a resumed
        incremental's references below its cut, docs/FORMAT.md §11.5)."""
        self._raw_bytes += n

    def finish(self, summary: dict[str, Any] | None = None,
               before_rename: Callable[[Any], None] | None = None) -> WrittenArchive:
        """Write index, summary and trailer; commit the sink, checking the written bytes with
        `before_rename` first (a local temp file's path, fsynced meanwhile; or a Source over
        the bytes an upload sent, before it completes)."""
        if self._closed:
            raise ArchiveError("archive writer is closed")
        try:
            self._head_out()
            self._page_out(final=True)
            if self._cipher is not None:
                self._finishing()
            chunk_bytes = (self._pos - self._base - self._manifest_length - self._node_length
                           - self._page_bytes)
            index_data = self._index.encode(self._manifest_length, self._manifest_xxh3,
                                            self._node_offset, self._node_length)
            # stored: opening stays fast
            ioff, ilen, ixxh = self._write_data_member(fmt.TYPE_INDEX, fmt.INDEX_NAME,
                                                       index_data, 0)
            fingerprint = self._fingerprint.hexdigest()
            full = dict(summary or {})
            if self.parent_fingerprint is not None:
                full["content_fingerprint"] = fingerprint
                full["referenced_chunks"] = self.referenced_chunks
                self._fingerprint.update(bytes.fromhex(self.parent_fingerprint))
                fingerprint = self._fingerprint.hexdigest()
            full.update(
                chunks=self._index.count,
                records=self._records,
                raw_bytes=self._raw_bytes,
                payload_bytes=self._payload_bytes,
                chunk_bytes=chunk_bytes,
                fingerprint=fingerprint,
            )
            sdata = json.dumps(full, sort_keys=True, indent=1).encode()
            soff, slen, sxxh = self._write_data_member(fmt.TYPE_SUMMARY, fmt.SUMMARY_NAME, sdata)
            if self._cipher is not None:  # the last sealed member: zero the data key
                self._cipher.close()
            trailer = fmt.Trailer(ioff, ilen, ixxh, soff, slen, sxxh, self._index.count,
                                  self._pos, self.version, self.flags)
            self._write([trailer.encode()])
            self._sink.commit(before_rename)
            self._closed = True
        except BaseException as exc:
            self._discard(exc)
            raise
        return WrittenArchive(self.final, self._pos, self._index.count, self._records,
                              self._raw_bytes, self._payload_bytes, chunk_bytes, fingerprint,
                              full)

    def abort(self) -> None:
        """Discard what was written (temp file, multipart upload). Nothing is left at the
        final location."""
        self._close_key()
        self._sink.abort()

    def _close_key(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pending_key is not None:
                self._pending_key.cancel()
                self._pending_key = None
            if self._cipher is not None:
                self._cipher.close()

    def _keeps_when_cancelled(self) -> bool:
        """A resumed run's file (ResumedSink), or a `backup --resume` run's own local temp
        file once its manifest is in it (a file without one could not be resumed)."""
        if getattr(self._sink, "keep_when_cancelled", False):
            return True
        return (self._keep_when_cancelled and getattr(self._sink, "release", None) is not None
                and getattr(self, "_head", 0) is None and self._pos > self._base)

    def _discard(self, exc: BaseException | None) -> None:
        """abort(), except that a `backup --resume` run's temp file stopped by Ctrl-C, SIGTERM
        or --timeout (Cancelled) is kept: it holds its (and earlier runs') work, which the next
        `backup --resume` continues (cutting off what this run left torn, docs/FORMAT.md
        §11.5). Nothing is left at the final location either way."""
        if isinstance(exc, Cancelled) and self._keeps_when_cancelled():
            self._close_key()
            try:
                self._sink.release()
            except OSError:
                pass  # an early sync's error: the file is closed and kept all the same
            return
        self.abort()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self._discard(exc)
