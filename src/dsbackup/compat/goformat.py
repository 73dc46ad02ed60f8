"""Read archives written by the Go tool dsbackup re-imagines (gosuda/boxo-starter-kit, pkg/backup).

The Go format (docs/GOFORMAT.md): one gzip stream holding a tar archive whose members are
``chunk_N.chunk`` (a JSON object ``{key: base64(value)}``) followed by ``metadata.json``. The Go
writer names chunks by ``keys_so_far // chunk_size``, so the final partial chunk usually shares
its name with the chunk before it; both members are read, in order.

The archive is read once, as a stream (no seeking; a pipe works). Records are spooled to a
temporary SQLite table keyed by the key, so a key seen again replaces the earlier record (the
Go restore ``Put``s chunks in archive order: the last occurrence wins) and the output comes back
in bytewise key order in bounded memory. Temporary space is about the restored data's size.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import json
import os
import re
import sqlite3
import stat
import sys
import tarfile
import tempfile
import threading
import zlib
from array import array
from collections.abc import Iterator
from typing import IO, Any

from dsbackup.errors import ArchiveError, Cancelled, IntegrityError, UnsupportedArchive
from dsbackup.storage import is_remote

try:  # ISA-L inflate is several times faster than zlib's; same API and errors as gzip
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _InflateError
except ImportError:  # pragma: no cover - isal is optional here
    import gzip as _gzip

    _InflateError = zlib.error

__all__ = [
    "MAX_MEMBER_BYTES",
    "METADATA_NAME",
    "is_go_archive",
    "refuse_go_archive",
    "iter_go_records",
    "read_go_metadata",
]

CHECKSUM_PREFIX = "sha256-chunks:"  # dsbackup.compat.gowriter's checksum
MAX_MEMBER_BYTES = 1 << 30  # a chunk member is parsed in memory, as the Go restore does
METADATA_NAME = "metadata.json"
DSBACKUP_FIRST_MEMBER = "dsbackup/manifest.json"
_MAX_METADATA_BYTES = 64 << 20
_MAX_SPECIAL_BYTES = 1 << 20  # pax / GNU long-name headers (Go's tar reader caps them at 1 MiB)
_TAR_BUFSIZE = 1 << 16  # stream read size: fewer, larger inflate calls than tarfile's 10 KiB
_MAX_TRAILING_BYTES = 1 << 20  # zero padding allowed after the tar end-of-archive block
_CHUNK_NAME = re.compile(r"chunk_[0-9]+\.chunk")
_SURROGATE = re.compile("[\ud800-\udfff]")
_B64_SHAPE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_SPECIAL_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
     tarfile.GNUTYPE_LONGLINK}
)
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError, EOFError, OSError, zlib.error, _InflateError,
)
# int fields of metadata.json must be JSON integers, the rest strings or objects; null is allowed
_METADATA_TYPES: dict[str, type] = {
    "version": str, "timestamp": str, "total_keys": int, "total_size": int,
    "compression": str, "checksum": str, "config": dict, "statistics": dict,
    "datastore_info": dict,
}


class _TarDamage(Exception):
    """A tar header that Python's tarfile would silently treat as the end of the archive."""


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that rejects damaged headers and oversized pax / long-name headers.

    tarfile ends the archive quietly on a bad header after the first one and reads pax headers
    of any size into memory; Go's tar reader errors on the first and caps the second.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        buf = tarfile_.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
        try:
            obj = cls.frombuf(buf, tarfile_.encoding, tarfile_.errors)  # type: ignore[arg-type]
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            raise  # a zero block or a clean end of data: the end of the archive
        except tarfile.HeaderError as exc:
            raise _TarDamage(f"bad tar header: {exc}") from None
        if obj.type in _SPECIAL_TYPES and obj.size > _MAX_SPECIAL_BYTES:
            raise _TarDamage(f"tar extended header of {obj.size} bytes (limit {_MAX_SPECIAL_BYTES})")
        obj.offset = tarfile_.fileobj.tell() - tarfile.BLOCKSIZE  # type: ignore[union-attr]
        return obj._proc_member(tarfile_)  # type: ignore[attr-defined]


def _open(path: str | os.PathLike[str]) -> io.BufferedReader:
    p = os.fspath(path)
    try:
        return open(p, "rb", buffering=1 << 16)  # noqa: SIM115 - caller closes it
    except FileNotFoundError:
        raise ArchiveError(f"{p}: no such archive") from None
    except IsADirectoryError:
        raise ArchiveError(f"{p}: is a directory, not an archive") from None
    except OSError as exc:
        raise ArchiveError(f"{p}: cannot open: {exc}") from None


def is_go_archive(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a gzip'd tar whose first member is ``chunk_N.chunk`` or
    ``metadata.json`` (what the Go tool writes first). Reads only the first few KiB; a dsbackup
    archive (first member ``dsbackup/manifest.json``) or any unreadable file gives False;
    so does an S3 object or ``-`` (the Go format is read from local files only)."""
    if is_remote(path):
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO's open() would wait for a writer
            return False
        with open(path, "rb") as raw:
            if raw.peek(2)[:2] != b"\x1f\x8b":
                return False
            with _gzip.open(raw, "rb") as gz, tarfile.open(
                fileobj=gz, mode="r|", tarinfo=_StrictTarInfo
            ) as tf:
                first = tf.next()
    except (*_STREAM_ERRORS, _TarDamage, ValueError):
        return False
    if first is None or not first.isreg() or first.name == DSBACKUP_FIRST_MEMBER:
        return False
    return first.name == METADATA_NAME or _CHUNK_NAME.fullmatch(first.name) is not None


def refuse_go_archive(path: str | os.PathLike[str], role: str) -> None:
    """UnsupportedArchive (exit 2) when ``path`` is an archive of the Go tool's format, for a
    ``role`` that needs a dsbackup archive (`--parent`, `consolidate`'s input): it is not
    damaged, as the dsbackup reader's "not a dsbackup trailer" (exit 3) would say."""
    if is_go_archive(path):
        raise UnsupportedArchive(f"{path}: an archive of the Go tool's format (docs/GOFORMAT.md);"
                                 f" {role} needs a dsbackup archive")


def _classify(p: str, info: tarfile.TarInfo) -> str | None:
    """'chunk', 'metadata' or None (ignored), as the Go restore decides by name."""
    name = info.name
    if name.startswith("/") or ".." in name.split("/"):
        raise IntegrityError(f"{p}: member {name!r} has an unsafe path", part=name)
    if name == METADATA_NAME:
        kind = "metadata"
    elif name.endswith(".chunk"):  # Go: filepath.Ext(name) == ".chunk"
        if info.isdir():
            return None
        kind = "chunk"
    else:
        return None
    if not info.isreg():
        raise IntegrityError(f"{p}: member {name!r} is not a regular file", part=name)
    return kind


def _walk(
    path: str | os.PathLike[str], *, max_member_bytes: int, read_chunks: bool
) -> Iterator[tuple[str, str, bytes]]:
    """Yield (kind, member name, data) for chunk and metadata members, in archive order.

    Chunk data is b"" when ``read_chunks`` is false. After the tar end the rest of the gzip
    stream is read, so its CRC is checked and trailing non-zero data is caught."""
    p = os.fspath(path)
    last = "(start of archive)"
    with _open(p) as raw:
        if raw.peek(2)[:2] != b"\x1f\x8b":
            raise ArchiveError(f"{p}: not a gzip file (not a Go backup archive)")
        try:
            with _gzip.open(raw, "rb") as gz, tarfile.open(
                fileobj=gz, mode="r|", tarinfo=_StrictTarInfo, bufsize=_TAR_BUFSIZE
            ) as tf:
                while (info := tf.next()) is not None:
                    tf.members.clear()  # stream mode keeps every TarInfo otherwise
                    last = info.name
                    kind = _classify(p, info)
                    if kind is None:
                        continue
                    cap = _MAX_METADATA_BYTES if kind == "metadata" else max_member_bytes
                    if info.size > cap:
                        raise IntegrityError(
                            f"{p}: member {info.name!r} is {info.size} bytes, over the limit "
                            f"of {cap} bytes", part=info.name)
                    if kind == "chunk" and not read_chunks:
                        yield kind, info.name, b""
                        continue
                    member = tf.extractfile(info)
                    data = member.read() if member is not None else b""
                    if len(data) != info.size:
                        raise IntegrityError(f"{p}: member {info.name!r} is truncated",
                                             part=info.name)
                    yield kind, info.name, data
                last = "(end of archive)"
                _drain_after_end(p, tf.fileobj)  # type: ignore[arg-type]
        except _TarDamage as exc:
            raise IntegrityError(f"{p}: after member {last!r}: {exc}", part=last) from None
        except _STREAM_ERRORS as exc:
            raise IntegrityError(f"{p}: damaged archive after member {last!r}: {exc}",
                                 part=last) from None


def _drain_after_end(p: str, stream: IO[bytes]) -> None:
    seen = 0
    while block := stream.read(1 << 16):
        seen += len(block)
        if seen > _MAX_TRAILING_BYTES or block.count(0) != len(block):
            raise IntegrityError(f"{p}: unexpected data after the end of the tar archive",
                                 part="end")


def _parse_metadata(p: str, name: str, data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{p}: member {name!r}: bad JSON: {exc}", part="metadata") from None
    if not isinstance(meta, dict):
        raise IntegrityError(f"{p}: member {name!r} is not a JSON object", part="metadata")
    for field, kind in _METADATA_TYPES.items():
        value = meta.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise IntegrityError(f"{p}: member {name!r}: field {field!r} has the wrong type",
                                 part="metadata")
    return meta


def read_go_metadata(
    path: str | os.PathLike[str], *, max_member_bytes: int = MAX_MEMBER_BYTES
) -> dict[str, Any]:
    """The parsed ``metadata.json`` of a Go archive ({} if it has none; the last one if
    several). Streams the whole archive, since the Go writer puts metadata last."""
    meta: dict[str, Any] = {}
    p = os.fspath(path)
    for kind, name, data in _walk(p, max_member_bytes=max_member_bytes, read_chunks=False):
        if kind == "metadata":
            meta = _parse_metadata(p, name, data)
    return meta


def _short(key: str) -> str:
    """A key for an error message: repr'd (no control characters) and at most ~100 chars."""
    return repr(key) if len(key) <= 96 else repr(key[:96]) + "..."


def _go_key(key: str) -> bytes:
    """The key the Go restore writes: ``datastore.NewKey(key)``, i.e. path.Clean of "/" + key."""
    if not (key.startswith("/") and "//" not in key and "/." not in key
            and (len(key) == 1 or not key.endswith("/"))):
        parts: list[str] = []
        for part in key.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        key = "/" + "/".join(parts)
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:  # a lone \ud8xx escape: Go's decoder makes it U+FFFD
        return _SURROGATE.sub("\ufffd", key).encode("utf-8")


if sys.version_info >= (3, 11):
    def _b64(text: str) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)
else:  # pragma: no cover - exercised on Python 3.10 only
    def _b64(text: str) -> bytes:
        if _B64_SHAPE.fullmatch(text) is None:
            raise binascii.Error("not padded standard base64")
        return binascii.a2b_base64(text)


def _parse_chunk(p: str, name: str, data: bytes) -> tuple[list[bytes], list[bytes], int]:
    """Keys, values and total value bytes of one chunk member (Go: map[string][]byte)."""
    try:
        obj = json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{p}: member {name!r}: bad JSON: {exc}", part=name) from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{p}: member {name!r} is not a JSON object", part=name)
    keys: list[bytes] = []
    values: list[bytes] = []
    size = 0
    for key, text in obj.items():
        if text is None:  # a nil []byte marshals as null
            value = b""
        elif isinstance(text, str):
            if "\n" in text or "\r" in text:  # Go's base64 decoder skips CR and LF
                text = text.replace("\r", "").replace("\n", "")
            try:
                value = _b64(text)
            except ValueError as exc:  # binascii.Error, or non-ASCII text
                raise IntegrityError(f"{p}: member {name!r}: key {_short(key)}: bad base64: {exc}",
                                     part=name) from None
        else:
            raise IntegrityError(f"{p}: member {name!r}: key {_short(key)}: value is a "
                                 f"{type(text).__name__}, not a base64 string", part=name)
        keys.append(_go_key(key))
        values.append(value)
        size += len(value)
    return keys, values, size


class _Spool:
    """Records keyed by key in a temporary SQLite table: replace on repeat, read back sorted."""

    def __init__(self, directory: str) -> None:
        self._db = sqlite3.connect(os.path.join(directory, "spool.sqlite"), isolation_level=None)
        for pragma in ("page_size = 65536", "journal_mode = OFF", "synchronous = OFF",
                       "locking_mode = EXCLUSIVE", "cache_size = -65536"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE r (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        self._db.execute("BEGIN")

    def add(self, keys: list[bytes], values: list[bytes]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO r (k, v) VALUES (?, ?)", zip(keys, values))

    def batches(self, records: int, nbytes: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        cursor = self._db.execute("SELECT k, v FROM r ORDER BY k")  # BLOBs compare by memcmp
        keys: list[bytes] = []
        values: list[bytes] = []
        size = 0
        while rows := cursor.fetchmany(256):
            for key, value in rows:
                keys.append(key)
                values.append(value)
                size += len(key) + len(value)
                if len(keys) >= records or size >= nbytes:
                    yield keys, values
                    keys, values, size = [], [], 0
        if keys:
            yield keys, values

    def close(self) -> None:
        self._db.close()


def iter_go_records(
    path: str | os.PathLike[str],
    *,
    batch_records: int = 4096,
    batch_bytes: int = 64 << 20,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    require_metadata: bool = True,
    check_totals: bool = True,
    tmp_dir: str | os.PathLike[str] | None = None,
    metadata_out: dict[str, Any] | None = None,
    counts_out: dict[str, int] | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """Yield (keys, values) batches of a Go archive in bytewise key order, each key once.

    A key in several chunks keeps its last value (the Go restore puts chunks in archive order).
    Keys are what Go's ``datastore.NewKey`` makes of the stored string (UTF-8). Nothing is
    yielded until the whole archive has been read and checked: with ``require_metadata`` a
    missing ``metadata.json`` (the Go writer's last member) is an IntegrityError; with
    ``check_totals`` the chunk members must be those its ``total_keys`` and
    ``config.ChunkSize`` imply, and hold no more records or value bytes than it declares.
    ``metadata_out``, if given, receives the metadata; ``counts_out`` the number of chunk
    ``members``, ``records`` in them (a repeated key counted each time) and ``value_bytes``.
    ``cancel``, once set, raises Cancelled at the next member read. A batch holds
    at most ``batch_records`` records and stops growing once it reaches ``batch_bytes``."""
    if batch_records < 1 or batch_bytes < 1:
        raise ValueError("batch_records and batch_bytes must be positive")
    p = os.fspath(path)
    meta: dict[str, Any] | None = None
    records = value_bytes = 0
    numbers = array("q")  # N of each chunk_N.chunk member, -1 for other .chunk names
    digests = hashlib.sha256()  # of the chunk bodies' SHA-256s, for a sha256-chunks checksum
    with tempfile.TemporaryDirectory(prefix="dsbackup-go-", dir=tmp_dir) as tmp:
        spool = _Spool(tmp)
        try:
            for kind, name, data in _walk(p, max_member_bytes=max_member_bytes,
                                          read_chunks=True):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled while reading the archive")
                if kind == "metadata":
                    meta = _parse_metadata(p, name, data)
                    continue
                keys, values, size = _parse_chunk(p, name, data)
                digests.update(hashlib.sha256(data).digest())
                number = _CHUNK_NAME.fullmatch(name)
                numbers.append(int(name[6:-6]) if number and len(name) < 30 else -1)
                records += len(keys)
                value_bytes += size
                try:
                    spool.add(keys, values)
                except sqlite3.Error as exc:  # disk full, or a record over SQLite's 1e9 bytes
                    raise ArchiveError(f"{p}: member {name!r}: cannot spool its records in "
                                       f"{tmp}: {exc}") from None
            _check_metadata(p, meta, numbers, records, value_bytes, require_metadata, check_totals)
            _check_checksum(p, meta, digests.hexdigest())
            if metadata_out is not None:
                metadata_out.clear()
                metadata_out.update(meta or {})
            if counts_out is not None:
                counts_out.update(members=len(numbers), records=records,
                                  value_bytes=value_bytes)
            yield from spool.batches(batch_records, batch_bytes)
        finally:
            spool.close()


def _check_checksum(p: str, meta: dict[str, Any] | None, found: str) -> None:
    """``checksum`` as ``backup --format go`` writes it: ``sha256-chunks:`` + the SHA-256
    of the chunk bodies' SHA-256 digests in archive order (the Go tool writes "")."""
    declared = (meta or {}).get("checksum") or ""
    if declared.startswith(CHECKSUM_PREFIX) and declared[len(CHECKSUM_PREFIX):] != found:
        raise IntegrityError(f"{p}: {METADATA_NAME} checksum {declared} does not match the "
                             f"chunk members ({CHECKSUM_PREFIX}{found}): a chunk was changed",
                             part="metadata")


def _expected_chunk_numbers(total_keys: int, chunk_size: int) -> list[int]:
    """N of each ``chunk_N.chunk`` the Go writer emits: keys written so far // chunk size.
    (``backup --format go`` names them ``chunk_1`` ... ``chunk_m`` instead, m = the number
    of chunks: unique names; both are accepted.)"""
    full, rest = divmod(total_keys, chunk_size)
    return list(range(1, full + 1)) + ([full] if rest else [])


def _check_metadata(p: str, meta: dict[str, Any] | None, numbers: array[int], records: int,
                    value_bytes: int, require: bool, check_totals: bool) -> None:
    """Check the chunks against metadata.json.

    total_keys / total_size count every record the Go writer put in a chunk, including a key
    its query returned twice within one chunk (the JSON map keeps one), so the chunks may hold
    fewer records than declared, never more; the member names (chunk_1, chunk_2, ... and the
    final partial chunk) follow from total_keys and config.ChunkSize alone."""
    if meta is None:
        if require:
            raise IntegrityError(f"{p}: no {METADATA_NAME} (the Go tool writes it last: the "
                                 "archive is incomplete)", part="metadata")
        return
    if not check_totals:
        return
    total_keys, total_size = meta.get("total_keys"), meta.get("total_size")
    config = meta.get("config") or {}
    chunk_size = config.get("ChunkSize")
    if isinstance(total_keys, int) and isinstance(chunk_size, int) and chunk_size > 0:
        full, rest = divmod(max(total_keys, 0), chunk_size)
        implied = full + (1 if rest else 0)
        # the lists are made only for as many members as the archive holds: a metadata.json
        # claiming 10**8 records in chunks of 1 made lists of that size (GBs), 10**100 an
        # OverflowError
        if len(numbers) != implied or numbers.tolist() not in (
                _expected_chunk_numbers(total_keys, chunk_size),
                list(range(1, implied + 1))):  # dsbackup's --format go: unique names
            raise IntegrityError(
                f"{p}: {METADATA_NAME} (total_keys {total_keys}, ChunkSize {chunk_size}) implies "
                f"{implied} chunk members, found {len(numbers)} not named as the Go tool "
                "names them (a chunk is missing, added or out of order)", part="metadata")
    for field, declared, found in (("total_keys", total_keys, records),
                                   ("total_size", total_size, value_bytes)):
        if isinstance(declared, int) and found > declared:
            raise IntegrityError(f"{p}: {METADATA_NAME} says {field} = {declared}, the chunks "
                                 f"hold more: {found}", part="metadata")
    if records == total_keys and isinstance(total_size, int) and value_bytes != total_size:
        raise IntegrityError(f"{p}: {METADATA_NAME} says total_size = {total_size}, the chunks "
                             f"hold {value_bytes} bytes of values", part="metadata")
