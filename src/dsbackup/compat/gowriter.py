"""``backup --format go``: write an archive the Go tool's ``RestoreBackup`` reads
(docs/GOFORMAT.md §3), with unique chunk names and a real checksum.

The store is scanned in key order and cut into chunks of exactly ``chunk_size`` records
(the Go tool's ``ChunkSize``). Each chunk is one tar member ``chunk_N.chunk`` (N = 1, 2, ...:
unique, unlike the Go writer's repeated last name) holding Go's
``json.Marshal(map[string][]byte)``; ``metadata.json`` with the Go field names comes last,
then the tar end blocks. Every tar member is compressed as its own gzip member (the tar
header as a stored block, the body deflated: the member layout of docs/FORMAT.md §2 without
the ``DS`` extra field), so a pool of threads builds and compresses members side by side in
native code (JSON and base64 in dsbackup._ext.gojson, deflate in dsbackup._ext.compress, both
with the GIL released); the file is their concatenation in order. Go's ``gzip.Reader`` (and
Python's, gzip(1), pigz) read concatenated members as one stream.

``checksum`` is ``sha256-chunks:<hex>``: SHA-256 over the SHA-256 digests of the chunk
members' bodies (the JSON text) in archive order; dsbackup's reader and ``verify`` check it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup._ext.checksum import crc32, crc32_combine
from dsbackup._ext.compress import STORED_TAR_PREFIX, deflate_body, tar_header
from dsbackup._ext.gojson import go_chunk_json
from dsbackup.compat.goformat import CHECKSUM_PREFIX, MAX_MEMBER_BYTES, _go_key
from dsbackup.errors import BackupError, Cancelled, ConfigError
from dsbackup.patterns import KeyMatcher, key_matcher
from dsbackup.storage.local import LocalSink

__all__ = ["GoWriteResult", "write_go_archive", "CHECKSUM_PREFIX", "DEFAULT_GO_CHUNK_SIZE"]

DEFAULT_GO_CHUNK_SIZE = 1000  # the Go tool's default ChunkSize
_GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
_TAR_BLOCK = 512
_IN_FLIGHT_BYTES = 256 << 20  # values of chunks queued or being encoded, beyond one chunk


@dataclass
class GoWriteResult:
    records: int
    value_bytes: int
    json_bytes: int
    chunks: int
    size: int
    checksum: str
    excluded_records: int
    duration_s: float


def _gzip_member(header: bytes, body: bytes, level: int) -> bytes:
    """One gzip member holding a tar header (stored) and its body (deflated, padded)."""
    b = deflate_body(body, level)
    crc = crc32_combine(crc32(header), b.crc32, b.size)
    isize = (_TAR_BLOCK + b.size) & 0xFFFFFFFF
    return b"".join((_GZIP_HEAD, STORED_TAR_PREFIX, header, bytes(b.data),
                     (crc & 0xFFFFFFFF).to_bytes(4, "little"), isize.to_bytes(4, "little")))


def _chunk_member(number: int, keys: list[bytes], values: list[bytes], level: int
                  ) -> tuple[bytes, bytes, int, int]:
    """(gzip member, sha256 of the body, body length, value bytes) of one chunk."""
    _check_go_keys(number, keys)
    try:
        body = go_chunk_json(keys, values)
    except ValueError as exc:  # keys out of order: the datastore broke its scan contract
        raise BackupError(f"chunk {number}: {exc}") from None
    if len(body) > MAX_MEMBER_BYTES:
        raise BackupError(
            f"chunk {number}: {len(keys)} records make {len(body)} bytes of JSON, over the "
            f"{MAX_MEMBER_BYTES} bytes a reader holds in memory per member; give a smaller "
            "--chunk-size")
    header = tar_header(f"chunk_{number}.chunk".encode(), len(body), 0)
    return (_gzip_member(header, body, level), hashlib.sha256(body).digest(), len(body),
            sum(map(len, values)))


def _check_go_keys(number: int, keys: list[bytes]) -> None:
    """BackupError naming a key the Go format cannot give back as it is: a JSON map key is
    text (Go's json.Marshal writes each invalid UTF-8 byte as U+FFFD) and the Go restore puts
    ``datastore.NewKey(key)``, a cleaned path. Such keys came back changed, several as one
    (``/k/\\xff`` and ``/k/\\xfe``; ``/a//b`` and ``/a/b``), after a backup and a verify that
    said OK. The usual chunk (every key clean) is checked at once on its keys joined by NUL
    bytes (C-speed scans: 40,000 keys in ~2 ms); else key by key."""
    joined = b"\0".join(keys) + b"\0"
    if (joined[:1] == b"/" and joined.count(b"\0/") == len(keys) - 1
            and joined.count(b"\0") == len(keys)  # (no NUL inside a key)
            and b"//" not in joined and b"/." not in joined and b"/\0" not in joined):
        try:
            joined.decode("utf-8")  # (a NUL ends any sequence a key leaves unfinished)
            return
        except UnicodeDecodeError:
            pass
    for k in keys:
        try:
            cleaned = _go_key(k.decode("utf-8"))
        except UnicodeDecodeError:
            why = "it is not UTF-8 (the Go format's JSON would hold U+FFFD for its bytes)"
        else:
            if cleaned == k:
                continue
            why = f"the Go restore would write it as {cleaned[:200]!r} (a cleaned path)"
        raise BackupError(f"chunk {number}: key {k[:200]!r}: the Go format cannot hold it: "
                          f"{why}; back up in the dsbackup format (without --format go)")


def _chunks(ds: Any, chunk_size: int, matcher: KeyMatcher | None, stats: dict[str, int]
            ) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """The store's records in key order, in lists of exactly ``chunk_size`` (the last may be
    shorter). Lists are sliced per scan batch, not built record by record."""
    keys: list[bytes] = []
    values: list[bytes] = []
    for ks, vs in ds.scan_batches(b"", None):
        if matcher is not None:
            kept = [(k, v) for k, v in zip(ks, vs) if not matcher.match(k)]
            stats["excluded"] += len(ks) - len(kept)
            ks = [k for k, _ in kept]
            vs = [v for _, v in kept]
        keys += ks
        values += vs
        while len(keys) >= chunk_size:
            yield keys[:chunk_size], values[:chunk_size]
            del keys[:chunk_size], values[:chunk_size]
    if keys:
        yield keys, values


def go_metadata(*, created: datetime, records: int, value_bytes: int, level: int,
                chunk_size: int, exclude: list[str], checksum: str, json_bytes: int,
                duration_s: float, excluded: int, source: str) -> bytes:
    """``metadata.json`` as the Go tool's ``json.Marshal(BackupMetadata)`` lays it out."""
    ts = created.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    meta = {
        "version": "1.0", "timestamp": ts, "total_keys": records, "total_size": value_bytes,
        "compression": f"gzip-{level}", "checksum": checksum,
        "config": {"CompressionLevel": level, "ChunkSize": chunk_size, "Timeout": 0,
                   "VerifyIntegrity": True, "IncludeMetadata": False,
                   "ExcludePatterns": list(exclude) or None},
        "statistics": {"duration": int(duration_s * 1e9), "keys_processed": records,
                       "bytes_processed": value_bytes, "bytes_compressed": json_bytes,
                       "compression_ratio": (json_bytes / value_bytes) if value_bytes else 0,
                       "error_count": 0, "skipped_keys": excluded},
        "datastore_info": {"type": f"dsbackup {source}"},
    }
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False).replace(
        "<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def write_go_archive(ds: Any, path: str | os.PathLike[str], *, level: int = 1,
                     chunk_size: int = DEFAULT_GO_CHUNK_SIZE, exclude: list[str] | None = None,
                     threads: int = 1, cancel: threading.Event | None = None,
                     check: bool = True, overwrite: bool = False) -> GoWriteResult:
    """Write the store to ``path`` in the Go tool's format: a temp file beside it, checked
    (``check``: the gzip and tar structure and the member count read back), fsynced and
    linked into place as dsbackup archives are (dsbackup.storage.local.LocalSink: a file at
    ``path`` is replaced only with ``overwrite``, never one that appeared meanwhile; a killed
    run's temp file is removed by the next writer); nothing is left at ``path`` on failure."""
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be a positive integer, got {chunk_size}")
    t0 = time.perf_counter()
    created = datetime.now(timezone.utc)
    final = Path(path)
    patterns = list(exclude or [])
    matcher = key_matcher(patterns, "exclude_patterns")
    stats = {"excluded": 0}
    threads = max(1, threads)
    sink = LocalSink(final, overwrite=overwrite)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dsbackup-go")
    records = value_bytes = json_bytes = chunks = 0
    digests = hashlib.sha256()
    try:
        pending: deque[tuple[Future, int]] = deque()
        in_flight = 0

        def drain(limit: int) -> None:
            nonlocal value_bytes, json_bytes, in_flight
            while len(pending) > limit or (in_flight > _IN_FLIGHT_BYTES
                                           and len(pending) > 1):
                future, raw = pending.popleft()
                in_flight -= raw
                member, digest, jlen, vbytes = future.result()
                sink.write((member,))
                digests.update(digest)
                json_bytes += jlen
                value_bytes += vbytes

        for keys, values in _chunks(ds, chunk_size, matcher, stats):
            if cancel is not None and cancel.is_set():
                raise Cancelled("backup cancelled")
            chunks += 1
            records += len(keys)
            raw = sum(map(len, values))
            pending.append((pool.submit(_chunk_member, chunks, keys, values, level), raw))
            in_flight += raw
            drain(2 * threads)
        drain(0)
        checksum = CHECKSUM_PREFIX + digests.hexdigest()
        meta = go_metadata(created=created, records=records, value_bytes=value_bytes,
                           level=level, chunk_size=chunk_size, exclude=patterns,
                           checksum=checksum, json_bytes=json_bytes,
                           duration_s=time.perf_counter() - t0,
                           excluded=stats["excluded"], source=getattr(ds, "uri", ""))
        header = tar_header(b"metadata.json", len(meta), 0)
        # the tar end (two zero blocks) goes into the last member's padded body
        sink.write((_gzip_member(header, meta + b"\0" * (-len(meta) % _TAR_BLOCK)
                                 + b"\0" * (2 * _TAR_BLOCK), level),))
        sink.commit((lambda tmp: _check(tmp, chunks)) if check else None)  # fsync, check, link
    except BaseException:
        sink.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return GoWriteResult(records=records, value_bytes=value_bytes, json_bytes=json_bytes,
                         chunks=chunks, size=final.stat().st_size, checksum=checksum,
                         excluded_records=stats["excluded"],
                         duration_s=time.perf_counter() - t0)


def _check(tmp: str | os.PathLike[str], chunks: int) -> None:
    """Read the file back as a stream (gzip CRCs, tar headers) and count its members."""
    from dsbackup.compat.goformat import _walk
    from dsbackup.errors import IntegrityError

    seen = meta = 0
    for kind, _name, _data in _walk(tmp, max_member_bytes=1 << 62, read_chunks=False):
        seen += kind == "chunk"
        meta += kind == "metadata"
    if seen != chunks or meta != 1:
        raise IntegrityError(f"{tmp}: the archive just written reads back as {seen} chunks "
                             f"and {meta} metadata members, not {chunks} and 1")
