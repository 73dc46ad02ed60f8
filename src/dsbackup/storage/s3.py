"""S3-compatible object storage through obstore (Rust object_store): multipart uploads that
become the object only on completion, ranged GETs through a small block cache (adjacent chunks
share one request; a few requests in flight), list by prefix, delete.

Write-once as on disk: a HEAD before the upload starts and again before it completes refuses
an existing object; an archive of one part is then one PUT with ``If-None-Match: *`` (the server
refuses to replace, 412), a larger one a multipart upload of our own whose completion carries
the same header (:mod:`dsbackup.storage.s3multipart`; obstore cannot send it there). A failed
or interrupted upload is aborted. Both clients sign with the same credentials: the keys of the
environment or ``~/.aws``, else the AWS chain's (:mod:`dsbackup.storage.s3creds`), which the
obstore client is given as its credential provider.
"""

from __future__ import annotations

import logging
import mmap
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.store import S3Store

from dsbackup._ext.checksum import xxh3_64
from dsbackup.errors import (
    ArchiveError,
    ArchiveExistsError,
    ArchiveUnavailable,
    ConfigError,
    DsBackupError,
    IntegrityError,
)
from dsbackup.storage.base import Check
from dsbackup.storage.location import S3Location
from dsbackup.storage.s3api import S3Api
from dsbackup.storage.s3config import client_config, scrub, settings
from dsbackup.storage.s3creds import chain
from dsbackup.storage.s3creds import reset as reset_credentials
from dsbackup.storage.s3get import NOT_PARTIAL, Cancel, closed_message, get_into, get_tail
from dsbackup.storage.s3multipart import Conflict, KeyTaken, MultipartUpload
from dsbackup.storage.s3plan import Span, SparsePlan
from dsbackup.storage.s3stale import clean_before_backup
from dsbackup.storage.s3tls import CERT_PROBLEMS, ca_bundle, check_endpoint
from dsbackup.storage.sent import SentRecord, SentSource

TAIL_BYTES = 256 << 10  # the open's one GET: trailer, and summary and index when small
BLOCK = 8 << 20  # ranged GETs below this size are served from whole cached blocks
READ_AHEAD = 3  # blocks fetched ahead of a reader moving forward
# the block being read, the read-ahead, and one more for readers a block behind the furthest
# (a forward restore or deep verify never needs more: no block fetched twice, measured with 2
# and 4 workers; one less than READ_AHEAD + 1 and the read-ahead evicts the block being read)
CACHE_BLOCKS = READ_AHEAD + 2  # 40 MiB at most per open archive
# its pages made present in one call (MAP_POPULATE, Linux) rather than faulted in one by one
_MAP_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0) | getattr(mmap, "MAP_POPULATE", 0)
NEAR = 4  # a read this many blocks behind the furthest one still counts as moving forward
CLOSE_WAIT_S = 5.0  # close() waits this long at most for the GETs it cancelled to end

log = logging.getLogger(__name__)
_stores: dict[str, S3Store] = {}
_stores_lock = threading.Lock()
_api: S3Api | None = None


def store(bucket: str) -> S3Store:
    """One client per bucket and process (thread-safe, connection pooling)."""
    with _stores_lock:
        st = _stores.get(bucket)
        if st is None:
            s = settings()
            cfg = client_config()
            timeout = timedelta(seconds=s.timeout_s)
            https = urlsplit(cfg.get("endpoint") or "https://s3").scheme == "https"
            options: dict[str, Any] = {"allow_http": not https, "timeout": timeout,
                                       "connect_timeout": timedelta(seconds=10)}
            bundle = ca_bundle() if https else None  # a private CA's certificates: trusted too
            endpoint = urlsplit(cfg.get("endpoint") or "")
            if https and endpoint.hostname:  # a rejected certificate: at once, not retried
                check_endpoint(f"https://{endpoint.netloc.rpartition('@')[2]}",
                               endpoint.hostname, endpoint.port)
            if bundle is not None:
                options["root_certificate"] = bundle.pem
            # without keys of the environment or ~/.aws: the chain our signed requests use
            # (one cache, the same sources and variables; obstore's own chain reads others)
            provider = None if "secret_access_key" in cfg else chain().obstore
            try:
                st = S3Store(bucket, config=cfg,  # type: ignore[arg-type]
                             client_options=options,  # type: ignore[arg-type]
                             credential_provider=provider,  # type: ignore[arg-type]
                             retry_config={"max_retries": s.retries, "retry_timeout": timeout,
                                           "backoff": {"init_backoff": timedelta(seconds=0.1),
                                                       "max_backoff": timedelta(seconds=5),
                                                       "base": 2}})
            except Exception as exc:  # noqa: BLE001 - obstore's config errors
                raise ConfigError(f"s3://{bucket}: cannot set up the S3 client: "
                                  f"{message(exc)}") from None
            _stores[bucket] = st
        return st


def reader_api() -> S3Api:
    """The signed client of the ranged GETs into blocks (one per process: its connections
    are kept alive per thread)."""
    global _api
    with _stores_lock:
        if _api is None:
            _api = S3Api.from_config()
        return _api


def reset() -> None:
    """Forget the clients (after the endpoint or credentials changed: tests, scheduler)."""
    global _api
    with _stores_lock:
        _stores.clear()
        _api = None
    reset_credentials()


def message(exc: BaseException) -> str:
    """One line from an obstore error, with the root cause of its debug text (``Connection
    refused``, a timeout ...), secrets removed."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    line = re.sub(r"^Generic S3 error: |, max_retries: \d+, retry_timeout: \S+", "", line)
    line = re.sub(r"\s+-\s+", " - ", line)
    cause = re.findall(r'message: "([^"]+)"', text) or _tls_cause(text) or re.findall(
        r"kind: (Timeout|Connect|Decode|Body)\b", text)
    if cause and cause[-1] not in line:
        line += f" ({cause[-1]})"
    return scrub(line)[:400]


def _tls_cause(text: str) -> list[str]:
    """The TLS failure in rustls's debug text, in words (the certificate check, mostly)."""
    m = re.search(r"InvalidCertificate\(\s*(\w+)", text)
    if m:
        why = CERT_PROBLEMS.get(m.group(1), m.group(1))
        return [f"TLS: the server's certificate was rejected: {why}"]
    m = re.search(r"\b(InvalidMessage|AlertReceived|InvalidContentType|CorruptMessage\w*)"
                  r"\(?\s*(\w*)", text)
    if m:
        plain = "InvalidContentType" in text or "CorruptMessage" in text  # not TLS at all
        return [f"TLS handshake failed: {m.group(1)} {m.group(2)}".strip()
                + (" (is the endpoint really https?)" if plain else "")]
    return []


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, (FileNotFoundError, obstore.exceptions.NotFoundError))


def _unavailable(loc: S3Location, what: str, exc: BaseException) -> DsBackupError:
    if isinstance(exc, DsBackupError):  # the client's set-up (a CA bundle, the endpoint)
        return exc
    if _not_found(exc):
        return ArchiveUnavailable(f"{loc}: no such archive (object not found)")
    cred = re.search(r"External AWS credential provider: \w+: ([^\n]+)", str(exc))
    if cred:  # our chain's failure (s3creds.py), raised in obstore's call of it: its line
        return ArchiveUnavailable(scrub(f"{loc}: {what} failed: {cred.group(1).strip()}"))
    if "non-partial response" in str(exc):  # object_store's refusal of a 200 to a range
        return ArchiveUnavailable(f"{loc}: {what} failed: {NOT_PARTIAL}")
    if isinstance(exc, obstore.exceptions.PreconditionError):  # If-Match: another object
        return IntegrityError(f"{loc}: the object changed while it was being read ({what} "
                              "no longer matches its ETag)")
    if isinstance(exc, (obstore.exceptions.PermissionDeniedError,
                        obstore.exceptions.UnauthenticatedError)):
        return ArchiveUnavailable(f"{loc}: {what}: access denied ({message(exc)})")
    return ArchiveUnavailable(f"{loc}: {what} failed: {message(exc)}")


def head(loc: S3Location) -> dict[str, Any] | None:
    """The object's metadata, or None when there is none."""
    try:
        return obstore.head(store(loc.bucket), loc.key)
    except Exception as exc:  # noqa: BLE001 - mapped
        if _not_found(exc):
            return None
        raise _unavailable(loc, "HEAD", exc) from None


def list_archives(prefix: S3Location) -> list[S3Location]:
    """The objects directly under `prefix` (not in sub-prefixes), sorted, hidden names
    (starting with a dot) left out as on disk."""
    try:
        res = obstore.list_with_delimiter(store(prefix.bucket), prefix.prefix or None)
    except Exception as exc:  # noqa: BLE001 - mapped
        raise _unavailable(prefix, "LIST", exc) from None
    out = []
    for meta in res["objects"]:
        loc = S3Location(prefix.bucket, meta["path"])
        if not loc.name.startswith("."):
            out.append(loc)
    return sorted(out, key=lambda x: x.key)


def delete(loc: S3Location) -> None:
    try:
        obstore.delete(store(loc.bucket), loc.key)
    except Exception as exc:  # noqa: BLE001 - mapped
        raise _unavailable(loc, "DELETE", exc) from None


def set_aside(loc: S3Location, suffix: str) -> str:
    """Take the object at `loc` away from its archive name: a server-side copy to the key plus
    `suffix`, then a DELETE of the original (S3 has no rename). When the copy fails (an object
    over 5 GiB, a server without CopyObject) the original stays where it is, as a file whose
    rename fails does: a failed verify may be a missing parent or one bad chunk, and the
    object is the only copy of the rest. Returns what happened, for a message; ArchiveError
    when the DELETE fails (the object stays, the copy too)."""
    aside = S3Location(loc.bucket, loc.key + suffix)
    try:
        obstore.copy(store(loc.bucket), loc.key, aside.key, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - mapped: the object is left at its name
        return (f"it could not be copied to {aside} ({message(exc)}): it is still at its name; "
                "delete or rename it before a prune, which would count it as an archive")
    delete(loc)
    return f"kept as {aside}"


class S3Sink:
    """A multipart upload fed member by member (``part_size`` parts, ``concurrency`` in
    flight: memory bounded whatever the archive's size)."""

    def __init__(self, loc: S3Location, *, overwrite: bool = False) -> None:
        if loc.is_prefix:
            raise ConfigError(f"{loc}: names a prefix; give the archive's object key "
                              f"(s3://{loc.bucket}/{loc.prefix}NAME.dsb)")
        self.final = loc
        self.overwrite = overwrite
        self.removed_leftovers: list[Any] = []
        self.tmp = None
        if not overwrite and head(loc) is not None:
            raise ArchiveExistsError(f"{loc}: already exists; not replacing it (give "
                                     "--overwrite to replace an archive no other archive "
                                     "depends on)")
        clean_before_backup(loc)  # unfinished uploads of killed backups under the prefix
        self._sent = SentRecord(loc)
        self._done = False
        # the first part's worth is held here: an archive that fits is one conditional PUT
        # (If-None-Match: *, atomic create); a larger one becomes a multipart upload
        self._first: list[bytes] = []
        self._first_size = 0
        self._w: MultipartUpload | None = None

    def _open_writer(self) -> None:
        s = settings()
        try:
            self._w = MultipartUpload(S3Api.from_config(), self.final.bucket, self.final.key,
                                      part_size=s.part_size, concurrency=s.concurrency)
            for data in self._first:
                self._w.write(data)
        except Exception as exc:  # noqa: BLE001 - mapped
            raise ArchiveError(f"{self.final}: upload failed: {message(exc)}; nothing was "
                               "stored at the key") from None
        self._first.clear()

    def write(self, pieces: Sequence[bytes | memoryview]) -> int:
        # one copy: obstore keeps the buffer it is given until the part is uploaded, and the
        # pieces may be a worker's slot that is reused as soon as this returns; the record of
        # what was sent keeps the same object for its last members
        data = b"".join(pieces)
        n = self._sent.add(pieces, data)
        if not data:
            return n
        if self._w is None:
            self._first.append(data)
            self._first_size += len(data)
            if self._first_size <= settings().part_size:
                return n
            self._open_writer()  # over one part: the multipart upload starts
            return n
        try:
            self._w.write(data)
        except Exception as exc:  # noqa: BLE001 - mapped
            raise ArchiveError(f"{self.final}: upload failed: {message(exc)}; nothing was "
                               "stored at the key") from None
        return n

    def commit(self, check: Check | None = None) -> None:
        """Check the bytes sent (no download), HEAD again, then complete the upload: one PUT
        with If-None-Match: * for an archive of one part, else the multipart completion,
        conditional too."""
        try:
            if check is not None:
                check(SentSource(self._sent, self.final))
        finally:
            self._sent.close()  # its spool files: checked or not, no longer needed
        try:
            existing = None if self.overwrite else head(self.final)
        except ArchiveError as exc:
            raise ArchiveError(f"{exc}; the upload was not completed, nothing was stored "
                               "at the key") from None
        if existing is not None:
            raise ArchiveExistsError(f"{self.final}: an object appeared at the key while this "
                                     "backup was uploading; not replacing it")
        try:
            if self._w is None:
                obstore.put(store(self.final.bucket), self.final.key, b"".join(self._first),
                            mode="overwrite" if self.overwrite else "create",
                            use_multipart=False)
            else:
                self._w.complete(replace=self.overwrite)
        except (obstore.exceptions.AlreadyExistsError, KeyTaken, Conflict):  # 412, 409
            if self._w is not None:
                self._w.abort()  # a refused completion leaves the upload and its parts
            self._done = True
            if head(self.final) is None:  # 409 ConditionalRequestConflict: nothing landed
                raise ArchiveError(f"{self.final}: the server reported a conflicting write at "
                                   "the key; nothing was stored there: run the backup "
                                   "again") from None
            raise ArchiveExistsError(f"{self.final}: an object appeared at the key while this "
                                     "backup was uploading; not replacing it (the server "
                                     "refused the conditional write)") from None
        except Exception as exc:  # noqa: BLE001 - mapped
            raise ArchiveError(f"{self.final}: completing the upload failed: "
                               f"{message(exc)}; nothing was stored at the key") from None
        self._first.clear()
        self._done = True

    def abort(self) -> None:
        if getattr(self, "_done", True):
            return
        self._done = True
        self._first.clear()
        self._sent.close()
        if self._w is None:
            return  # nothing was sent
        self._w.abort()  # logs a failure itself


class _Block:
    """One cached block: its buffer (one of the source's, reused), the fetch filling it, and
    its pins (the fetch, each reader copying out of it). An evicted block's buffer goes back
    to the source only when nothing pins it: never refilled under a reader."""

    __slots__ = ("index", "buf", "future", "pins", "cached")

    def __init__(self, index: int, buf: mmap.mmap) -> None:
        self.index = index
        self.buf: mmap.mmap | None = buf
        self.future: Future[None] | None = None
        self.pins = 1  # the fetch's
        self.cached = True


def _bare_etag(etag: str) -> str:
    """An ETag without its quotes or weak mark (servers and clients differ in which they
    keep)."""
    return etag.removeprefix("W/").strip('"')


class S3Source:
    """Random access to an object: the open is one suffix GET (size, tail and the ETag every
    later GET must match); later reads go through a block cache with read-ahead, so a
    restore reading chunks in order makes one request per few MiB with a few in flight, or
    through a plan of the members about to be read (:meth:`plan`). Each GET reads its body
    straight into one of a few reused buffers (:mod:`dsbackup.storage.s3get`). A failed fetch is not
    kept: the next read of its bytes fetches them again. :meth:`close` cancels every GET
    queued or in flight and waits (briefly) for them to end."""

    def __init__(self, loc: S3Location) -> None:
        if loc.is_prefix:
            raise ArchiveUnavailable(f"{loc}: names a prefix, not an archive")
        self.location = loc
        store(loc.bucket)  # the client's set-up and its checks (CA bundle, certificate)
        self._api = reader_api()
        self._cancel = Cancel(str(loc))
        self._closed = False
        self._etag = ""  # the object's, from the open: every later GET must match it
        self._inflight: set[Future[None]] = set()
        # the same signed GETs, checks and retries as the blocks'
        got = get_tail(self._api, loc.bucket, loc.key, TAIL_BYTES, str(loc),
                       cancel=self._cancel)
        if got is None:
            self._tail, self.size = self._tail_after_416()
        else:
            self._tail, self.size, self._etag = got
        self._tail_start = self.size - len(self._tail)
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._free: list[mmap.mmap] = []  # buffers of evicted blocks, for the next ones
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._max_block = -2
        self._fetches = 0  # blocks fetched (a block fetched twice: the cache was too small)
        self._plan: SparsePlan | None = None

    def still_at_location(self) -> bool:
        """Whether the key still holds the object opened (one HEAD): the same size and, where
        the open saw one, the same ETag; False once it was deleted or replaced."""
        meta = head(self.location)
        if meta is None or int(meta.get("size", -1)) != self.size:
            return False
        return not self._etag or _bare_etag(meta.get("e_tag") or "") == _bare_etag(self._etag)

    def plan(self, ranges: Iterable[tuple[int, int]]) -> None:
        """The (offset, length) of the members about to be read, in order (pulled lazily):
        fetched by ranged GETs of just those ranges, adjacent ones coalesced
        (:mod:`dsbackup.storage.s3plan`); reads elsewhere still go through the blocks. A new
        plan replaces the last."""
        new = SparsePlan(self, ranges, settings().read_gap_kb << 10, BLOCK,
                         settings().read_concurrency)
        with self._lock:
            if self._closed:
                raise ArchiveUnavailable(closed_message(str(self.location)))
            old, self._plan = self._plan, new
        if old is not None:
            old.close()
        new.top_up()

    def _tail_after_416(self) -> tuple[bytes, int]:
        """(tail, size) when the suffix GET was refused as unsatisfiable: S3 does that for an
        empty object only, some servers also for a suffix longer than the object (S3 returns
        the whole object then); a HEAD tells which, and a bounded range reads the tail."""
        meta = head(self.location)
        if meta is None:
            raise ArchiveUnavailable(f"{self.location}: no such archive (object not found)")
        size = int(meta["size"])
        if size == 0:
            return b"", 0
        start = max(0, size - TAIL_BYTES)
        return self._get(start, size), size

    def _get(self, start: int, end: int) -> bytes:
        """The bytes at [start, end), outside the cache (a read of a block or more)."""
        buf = bytearray(end - start)
        etag = get_into(self._api, self.location.bucket, self.location.key, start,
                        memoryview(buf), str(self.location), etag=self._etag,
                        cancel=self._cancel)
        if not self._etag:  # the open's bounded range (after a 416): its ETag is the pin
            self._etag = etag
        return bytes(buf)

    def _fill(self, blk: _Block | Span, start: int, end: int) -> None:
        """Fetch [start, end) into the block's buffer, then drop the fetch's pin. A failed
        fetch leaves the cache (or the plan): the readers waiting on it get its error, and
        the next read of these bytes fetches them again (never the same error replayed,
        never the half-filled buffer)."""
        ok = False
        try:
            assert blk.buf is not None
            with memoryview(blk.buf) as view:
                get_into(self._api, self.location.bucket, self.location.key, start,
                         view[:end - start], str(self.location), etag=self._etag,
                         cancel=self._cancel)
            ok = True
        finally:
            with self._lock:
                if not ok:
                    self._forget(blk)
                blk.pins -= 1
                self._release(blk)

    def _forget(self, blk: _Block | Span) -> None:
        """Take a failed fetch out of the cache or the plan; caller holds the lock."""
        if isinstance(blk, _Block):
            if self._blocks.get(blk.index) is blk:
                del self._blocks[blk.index]
                blk.cached = False
        elif self._plan is not None:
            self._plan.forget(blk)

    def _wait(self, future: Future[None] | None) -> None:
        """A fetch's outcome: its error, or "closed" when close() cancelled it first."""
        assert future is not None
        try:
            future.result()
        except CancelledError:
            raise ArchiveUnavailable(closed_message(str(self.location))) from None

    def _submit(self, blk: _Block | Span, start: int, end: int) -> Future[None]:
        """Start a fetch on the GETs' threads; caller holds the lock."""
        fut = self._executor().submit(self._fill, blk, start, end)
        self._inflight.add(fut)
        fut.add_done_callback(self._inflight.discard)
        return fut

    def _release(self, blk: _Block | Span) -> None:
        """An evicted block (or a plan's span) nothing pins gives its buffer back; caller
        holds the lock."""
        if blk.cached or blk.pins or blk.buf is None:
            return
        buf, blk.buf = blk.buf, None
        if isinstance(buf, bytearray):  # a small span's own
            return
        if len(self._free) < CACHE_BLOCKS:
            self._free.append(buf)
        else:
            try:
                buf.close()
            except BufferError:  # a view of it lives on: unmapped with the last one
                pass

    def _block(self, b: int) -> _Block:
        """Block b (cached, or its fetch started now), pinned for the caller, who unpins it
        with _unpin; caller holds the lock."""
        blk = self._blocks.get(b)
        if blk is not None:
            self._blocks.move_to_end(b)
            blk.pins += 1
            return blk
        blk = _Block(b, self._take_buffer())
        start = b * BLOCK
        blk.future = self._submit(blk, start, min(self.size, start + BLOCK))
        self._fetches += 1
        self._blocks[b] = blk
        while len(self._blocks) > CACHE_BLOCKS:
            _, old = self._blocks.popitem(last=False)
            old.cached = False
            self._release(old)
        blk.pins += 1
        return blk

    def _executor(self) -> ThreadPoolExecutor:
        """The GETs' threads (made on first use); caller holds the lock. None after close:
        a read then is an error, and starts no thread."""
        if self._closed:
            raise ArchiveUnavailable(closed_message(str(self.location)))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(settings().read_concurrency,
                                            thread_name_prefix="dsbackup-s3get")
        return self._pool

    def _take_buffer(self) -> mmap.mmap:
        """A block buffer: one given back, else a new mapping (a fresh mapping per block
        cost more CPU than its fetch: zeroed, faulted in and unmapped again, ~0.5 s/GB);
        caller holds the lock."""
        return self._free.pop() if self._free else \
            mmap.mmap(-1, min(BLOCK, self.size), flags=_MAP_FLAGS)

    def _unpin(self, blocks: list[_Block]) -> None:
        with self._lock:
            for blk in blocks:
                blk.pins -= 1
                self._release(blk)

    def _pinned(self, offset: int, length: int) -> tuple[int, list[_Block]]:
        """(first block, the blocks holding [offset, offset+length), pinned and fetched)."""
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK
        blocks: list[_Block] = []
        try:
            with self._lock:
                for b in range(first, last + 1):
                    blocks.append(self._block(b))
                # moving forward (threads of a restore read chunks roughly in order): read ahead
                if self._max_block - NEAR <= first <= self._max_block + 1:
                    for b in range(last + 1, min(last + 1 + READ_AHEAD,
                                                 (self.size - 1) // BLOCK + 1)):
                        self._unpin_locked(self._block(b))
                self._max_block = max(self._max_block, last)
            for blk in blocks:
                self._wait(blk.future)
        except BaseException:
            self._unpin(blocks)
            raise
        return first, blocks

    def _unpin_locked(self, blk: _Block) -> None:
        blk.pins -= 1
        self._release(blk)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise IntegrityError(f"{self.location}: read of {length} bytes at {offset} lies "
                                 f"outside the {self.size}-byte object")

    def read(self, offset: int, length: int) -> bytes:
        return self._read(offset, length, True)

    def _read(self, offset: int, length: int, advance: bool) -> bytes:
        """`advance`: a planned read may start the plan's spans up to it (s3plan); a read
        apart from the plan (read_once: an index page, perhaps read while the plan's own
        iterator waits for that page) must not wait for the plan's puller."""
        if length == 0:
            return b""
        self._check(offset, length)
        if offset >= self._tail_start:
            return self._tail[offset - self._tail_start:offset - self._tail_start + length]
        plan = self._plan
        if plan is not None:
            planned = plan.serve(offset, length, bytes, advance=advance)
            if planned is not None:
                return planned
        if length >= BLOCK:
            return self._get(offset, offset + length)
        first, blocks = self._pinned(offset, length)
        try:
            lo = offset - first * BLOCK
            if len(blocks) == 1:
                return blocks[0].buf[lo:lo + length]  # type: ignore[index]  # the one copy
            end = lo + length  # across blocks: the slices of each, joined
            return b"".join(blk.buf[max(lo - i * BLOCK, 0):min(end - i * BLOCK, BLOCK)]
                            for i, blk in enumerate(blocks))  # type: ignore[index]
        finally:
            self._unpin(blocks)

    def read_once(self, offset: int, length: int) -> bytes:
        """A read apart from the others (the manifest, the node member, an index page): its
        own GET of just these bytes, not a block (``ls`` and ``inspect`` would fetch 8 MiB for
        a manifest of a few hundred bytes), unless the tail or the plan holds them."""
        if length == 0:
            return b""
        self._check(offset, length)
        if offset >= self._tail_start or length >= BLOCK:
            return self._read(offset, length, False)
        plan = self._plan
        if plan is not None:
            planned = plan.serve(offset, length, bytes, advance=False)
            if planned is not None:
                return planned
        return self._get(offset, offset + length)

    def xxh3(self, offset: int, length: int) -> int:
        """Hashed in its block where it lies in one (no copy), else read and hashed."""
        if length == 0 or offset >= self._tail_start or length >= BLOCK or (
                offset // BLOCK != (offset + length - 1) // BLOCK):
            return xxh3_64(self.read(offset, length))
        self._check(offset, length)
        plan = self._plan
        if plan is not None:
            planned = plan.serve(offset, length, xxh3_64)
            if planned is not None:
                return planned
        first, blocks = self._pinned(offset, length)
        try:
            lo = offset - first * BLOCK
            with memoryview(blocks[0].buf) as view:  # type: ignore[arg-type]
                return xxh3_64(view[lo:lo + length])
        finally:
            self._unpin(blocks)

    def close(self) -> None:
        """Cancel every GET queued or in flight (a body being read stops at once: its
        connection is shut down), wait up to CLOSE_WAIT_S for them to end, free the buffers.
        Reads after close are errors (exit 2) and start nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cancel.set()
        if self._fetches:
            log.debug("%s: %d blocks of %d fetched", self.location, self._fetches,
                      (self.size - 1) // BLOCK + 1)
        plan, self._plan = self._plan, None
        if plan is not None:
            log.debug("%s: %d planned GETs, %d bytes", self.location, plan.gets, plan.bytes)
            plan.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            wait_futures(list(self._inflight), timeout=CLOSE_WAIT_S)
        with self._lock:
            for blk in self._blocks.values():
                blk.cached = False
                self._release(blk)
            self._blocks.clear()
            self._free.clear()  # the mappings go when the last block holding one does
