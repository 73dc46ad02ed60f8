"""Consolidate: rewrite an incremental archive (and what it takes from its parent chain) into a
self-contained archive of the same state. Chunk members are checked (member XXH3, inflate, CRC,
payload XXH3 and records) and their compressed bodies copied, not recompressed, when they are
in the output's codec (the top archive's, docs/FORMAT.md §11.6); other chunks are compressed
again in it."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dsbackup import codec as codecs
from dsbackup._ext.checksum import crc32, crc32_combine
from dsbackup._ext.compress import Body, deflate_body
from dsbackup.archive import format as fmt
from dsbackup.archive import guard
from dsbackup.archive.node import encode_node
from dsbackup.archive.pages import page_entries_after
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import check_payload
from dsbackup.archive.writer import ArchiveWriter, WrittenArchive
from dsbackup.errors import ConfigError, IntegrityError
from dsbackup.pipeline.chunks import ReadyChunk
from dsbackup.poolmap import ordered_map
from dsbackup.storage import display

MAX_THREADS = 256  # as BackupConfig.workers


def _body_of(raw: bytes, payload: memoryview | bytes, level: int,
             zstd: tuple[int, int] | None = None) -> Any:
    """The compressed tar-entry body of a checked member (copied when it has the standard
    stored tar header block, recompressed otherwise). `zstd`: the member is a zstd chunk of
    this (payload length, codec level), whose body is always copied (it is stored blocks)."""
    sub = fmt.parse_member_head(raw, "member")
    d = sub.deflate_offset
    start = d + len(fmt.STORED_TAR_PREFIX) + fmt.TAR_BLOCK
    if bytes(raw[d : d + len(fmt.STORED_TAR_PREFIX)]) != fmt.STORED_TAR_PREFIX:
        return deflate_body(payload, level if zstd is None else zstd[1])
    header = raw[d + len(fmt.STORED_TAR_PREFIX) : start]
    size = fmt.padded(sub.data_len)
    full_crc = int.from_bytes(raw[-8:-4], "little")
    body_crc = full_crc ^ crc32_combine(crc32(header), 0, size)
    if zstd is not None:
        return Body(bytes(raw[start:-8]), body_crc, size, sub.data_len, zstd[0], sub.data_xxh3,
                    codecs.BODY_ZSTD_STORED)
    return Body(bytes(raw[start:-8]), body_crc, size, sub.data_len)


def _load(reader: ArchiveReader, i: int, level: int, chunk_level: int) -> ReadyChunk:
    """Chunk i, checked, with its body in the output's codec (`chunk_level`, dsbackup.codec)
    and its catalog deflated at `level`."""
    holder, seq = reader.locate(i)
    e = reader.entry(i)
    raw = holder.read_member(seq)
    payload = holder.decode_chunk_member(seq, raw)
    info = check_payload(holder.path, seq, e, payload)
    out_zstd = codecs.is_zstd(chunk_level)
    if holder.encrypted or out_zstd != (holder.codec == codecs.ZSTD):
        body = deflate_body(payload, chunk_level)  # sealed again, or in the other codec
    else:
        body = _body_of(raw, payload, level, (e.payload_len, chunk_level) if out_zstd else None)
    c = ReadyChunk(e.records, e.first_key, e.last_key, e.keys_xxh3, e.payload_xxh3,
                   info.raw_bytes, body)
    if reader.index.catalog_count:
        craw = holder.read_catalog_member(seq)
        cdata = holder.read_catalog(seq)
        c.catalog_body = (deflate_body(cdata, level) if holder.encrypted
                          else _body_of(craw, cdata, level))
        c.catalog_xxh3 = holder.index.catalog(seq).data_xxh3
    return c


def consolidate_archive(path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                        parent_dirs: list[str | os.PathLike[str]] | None = None,
                        threads: int | None = None, overwrite: bool = False,
                        ) -> WrittenArchive:
    """Write `out`: a full archive holding every chunk of `path` (an incremental, or a full
    archive, which is then copied). The result restores to exactly the same records.

    `out` may not be `path` or an archive of its parent chain (PathConflictError); a file
    already at `out` is not replaced (ArchiveExistsError) unless `overwrite`, and never when
    another archive uses it as its parent (see dsbackup.archive.guard.check_new_archive)."""
    t0 = time.perf_counter()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"workers must be a positive integer (1 to {MAX_THREADS}), got "
                          f"{threads!r}")  # as backup
    threads = threads or min(8, os.cpu_count() or 1)
    with ArchiveReader(path, parent_dirs=parent_dirs) as reader:
        chain = reader.open_parents()
        guard.check_new_archive(out, overwrite=overwrite,
                                inputs=[reader.path] + (chain.paths if chain else []),
                                parent_dirs=parent_dirs or [])
        if chain is not None:
            chain.require_catalogs()  # the copy keeps the catalog: every part must be there
        m = dict(reader.manifest)
        s = reader.summary
        source_parent = m.get("parent")
        m["parent"] = None
        if source_parent is not None:
            m["consolidated_from"] = {"name": getattr(reader.path, "name", str(reader.path)),
                                      "fingerprint": s.get("fingerprint"),
                                      "parents": [p.name for p in chain.paths] if chain else []}
        settings = m.get("settings")
        level = settings.get("compression_level") if isinstance(settings, dict) else None
        codec = reader.codec  # the output's: the top archive's (§11.6)
        lo, hi = codecs.LEVELS[codec]
        if type(level) is not int or not lo <= level <= hi:  # (a manifest written by hand)
            level = codecs.DEFAULT_LEVEL[codec]
        chunk_level = codecs.chunk_level(codec, level, sealed=reader.encrypted)
        level = codecs.deflate_level(chunk_level)  # of the catalogs and other members
        # the node's files travel with the state (checked; the encoding is canonical)
        node = encode_node(reader.node_files()) if reader.has_node else None
        # an encrypted source gives an encrypted copy: a new data key, the same passphrase
        # or key file, the same scrypt salt and parameters (docs/FORMAT.md §11.4)
        key = reader.key if reader.encrypted else None
        kdf = reader.key_header.get("kdf") if reader.key_header else None
        with ArchiveWriter(out, manifest=m, level=level, overwrite=overwrite, codec=codec,
                           node=node, key=key, kdf=kdf,
                           page_entries=page_entries_after("auto", reader.index)) as w, \
                ThreadPoolExecutor(max_workers=threads,
                                   thread_name_prefix="dsbackup-consolidate") as pool:
            for c in ordered_map(pool, lambda i: _load(reader, i, level, chunk_level),
                                 range(reader.chunk_count), 2 * threads):
                w.add_chunk(c, c.catalog_body, c.catalog_xxh3)
            keep = {k: s[k] for k in ("excluded_records", "excluded_bytes", "snapshot")
                    if k in s}
            keep.update(mode="consolidated", duration_s=round(time.perf_counter() - t0, 6))
            expect = s.get("content_fingerprint", s.get("fingerprint"))
            return w.finish(keep, before_rename=lambda tmp: _check(tmp, expect))


def _check(tmp: Any, fingerprint: str | None) -> None:
    """`tmp`: a temp file's path, or a Source over the bytes an upload sent."""
    from dsbackup.archive.verify import verify_archive

    where = display(tmp)
    report = verify_archive(tmp, deep=False, threads=2)
    if not report.ok:
        raise IntegrityError(f"{where}: the consolidated archive failed its check: "
                             + "; ".join(report.errors[:3]))
    with ArchiveReader(tmp) as r:
        got = r.summary.get("fingerprint")
    if got != fingerprint:
        raise IntegrityError(f"{where}: consolidated fingerprint {got} differs from the source "
                             f"archive's content fingerprint {fingerprint}")
