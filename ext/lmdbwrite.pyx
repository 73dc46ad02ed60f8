"""Write chunk payloads straight into an LMDB environment with liblmdb, the GIL released.

The restore's fast path into LMDB: :meth:`LmdbPayloadWriter.write` parses whole chunk payloads
(docs/FORMAT.md §4: ``"DSC1"``, flags u32, count u64, then ``op u8 | key_len uvarint |
value_len uvarint | key | value`` per record) and puts every record with ``mdb_cursor_put`` in
one write transaction; no Python object is made per record. Parsing is bounds-checked (never
reads past a buffer) and as strict as ``framing.decode_records`` (known op, minimal varints,
key length 1..65535, keys strictly increasing, the header's count): a bad payload aborts the
transaction, so nothing of that call is written.

Puts use ``MDB_APPEND`` while keys lie past the environment's last key; a key at or before it
(a resumed restore rewriting a chunk) falls back to an ordinary put. The environment is opened
with ``MDB_NOSYNC``: :meth:`LmdbPayloadWriter.sync` forces the flush. Puts use ``MDB_RESERVE``
and copy the value themselves. With ``writemap=False`` (what restore uses) values are copied
into LMDB's dirty pages, which the commit writes with ``pwrite``; the pages each transaction
read through LMDB's read-only map (and the cached neighbours the kernel's fault-around mapped
with them) are unmapped after the commit, found once in /proc/self/maps. With ``writemap=True``
(``MDB_WRITEMAP``, the default) they are copied once, straight into the file's pages through
the map; but a write fault on a mapped page of the file makes the kernel read (for a new
part of the file: zero) the page first, and on the loaded development VM that cost a restore
up to twice the CPU time of the pwrite path (docs/PERFORMANCE.md, "Restore"). Through the
map, after each commit the pages written are unmapped again (``MADV_DONTNEED``; they stay in
the page cache), so the resident set does not grow with the data written; LMDB extends the
file to the map size, and :meth:`close` truncates it back to the pages in use. ``MDB_MAP_FULL``
doubles the map and redoes the transaction. Writing through the map into a part of the file
the filesystem has no blocks for raises SIGBUS when the disk is full, so before each write
transaction the file's growth is reserved with ``posix_fallocate`` (twice the payload bytes
plus 2 MiB past the pages in use; ``RESERVE_FACTOR``): a full disk is then ``ENOSPC`` from
the reservation, raised as :class:`LmdbNoSpace` before anything of the transaction is
written. Like lmdbscan and lmdbcopy this is a separate copy of LMDB
from py-lmdb's: the writer claims its path (:func:`dsbackup.datastores.lmdbclaims.claim` and
:func:`dsbackup._ext.lmdbregistry.register_foreign_open`), so opening it twice in this process, by
any of them, raises.
"""

import errno
import os

from dsbackup.errors import IntegrityError, InvalidKey, LmdbOSError

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy
from posix.mman cimport MADV_DONTNEED, madvise

from liblmdb cimport (
    MDB_APPEND,
    MDB_FIRST,
    MDB_KEYEXIST,
    MDB_MAP_FULL,
    MDB_MAP_RESIZED,
    MDB_NOMETASYNC,
    MDB_NOOVERWRITE,
    MDB_NOSYNC,
    MDB_RESERVE,
    MDB_WRITEMAP,
    MDB_NOTFOUND,
    MDB_NOTLS,
    MDB_RDONLY,
    MDB_cursor,
    MDB_dbi,
    MDB_env,
    MDB_envinfo,
    MDB_stat,
    MDB_txn,
    MDB_val,
    mdb_cursor_close,
    mdb_cursor_get,
    mdb_cursor_open,
    mdb_cursor_put,
    mdb_dbi_open,
    mdb_env_close,
    mdb_env_create,
    mdb_env_get_fd,
    mdb_env_get_maxkeysize,
    mdb_env_info,
    mdb_env_stat,
    mdb_env_open,
    mdb_env_set_mapsize,
    mdb_env_sync,
    mdb_txn_abort,
    mdb_txn_begin,
    mdb_txn_commit,
)
from lmdberror cimport lmdb_message
from uvarint cimport UV_OK, get_uvarint

cdef int _MAX_GROWTHS = 40
# reservation before a write: RESERVE_FACTOR × its payload bytes + RESERVE_SLACK past the pages
# in use (pages of an LMDB B-tree hold at most ~2× the record bytes; append mode fills them)
cdef size_t RESERVE_FACTOR = 2
cdef size_t RESERVE_SLACK = 2 << 20
cdef size_t _INITIAL_MAP_SIZE = 64 << 20
cdef size_t _HEADER = 16
cdef size_t _MAX_KEY = 65535
# Values of POPULATE_MIN bytes or more: their pages of the map are populated with one
# madvise(MADV_POPULATE_WRITE) before the copy instead of taking a write fault each (a fault
# costs more than the 4 KiB copy on the development VM). _populate_ok is 0 once the kernel
# refuses (or the populate fails): from then on the copy faults the pages in, as before.
cdef size_t POPULATE_MIN = 16384
cdef size_t PAGE = 4096
cdef int MADV_POPULATE_WRITE = 23
cdef int _populate_ok = 1


cdef enum:
    PE_OK = 0
    PE_SHORT_HEADER = 1
    PE_MAGIC = 2
    PE_FLAGS = 3
    PE_VARINT = 4
    PE_OP = 5
    PE_KEYLEN = 6
    PE_TRUNC_KEY = 7
    PE_TRUNC_VALUE = 8
    PE_ORDER = 9
    PE_COUNT_HIGH = 10
    PE_COUNT_LOW = 11
    PE_KEY_TOO_LONG = 12


ctypedef struct span:
    const unsigned char *p
    size_t n


ctypedef struct wresult:
    size_t records          # records put (not counting keys kept by overwrite=False)
    size_t nbytes           # key + value bytes of those
    int perr                # PE_* when a payload is malformed
    size_t pidx             # which payload
    uint64_t rec            # which record of it
    size_t off              # byte offset in it
    uint64_t val            # the offending number (length, op, count)
    size_t lo, hi           # span of map addresses the values were copied to
    bint remapped           # LMDB mapped the file anew (another process grew it)


class LmdbWriteError(LmdbOSError):
    """liblmdb reported an error while writing (exit 2): the message names the environment,
    the operation, and LMDB's text beside its return code; ``errno`` is set for a system
    error (printed without ``[Errno N]``: :class:`dsbackup.errors.LmdbOSError`)."""

    description = "LMDB write failed"


class LmdbNoSpace(LmdbWriteError):
    """The filesystem has no room for the reservation a write needs (nothing of that write
    was done). ``needed``: bytes the reservation asked for; ``free``: bytes available."""

    description = "no space for an LMDB write"

    def __init__(self, msg, needed, free):
        super().__init__(28, msg)  # ENOSPC
        self.needed = needed
        self.free = free


class LmdbKeyTooLong(LmdbWriteError, InvalidKey):
    """A key is longer than this LMDB build accepts (``mdb_env_get_maxkeysize``)."""

    description = "key too long for LMDB"


class PayloadError(IntegrityError, ValueError):
    """A payload is malformed (exit 3); ``index`` is its position in the list given to
    ``write``, ``record`` and ``offset`` say where (None when not known)."""

    description = "malformed chunk payload"

    def __init__(self, msg, index, record=None, offset=None):
        super().__init__(msg)
        self.index = index
        self.record = record
        self.offset = offset


cdef object _error_errno(int err, str what):
    return LmdbWriteError(err, what)


cdef object _error(int rc, str what):
    return LmdbWriteError(lmdb_message(rc, what))


include "lmdbenv.pxi"


cdef inline int _keycmp(const unsigned char *a, size_t alen, const unsigned char *b,
                        size_t blen) noexcept nogil:
    cdef size_t n = alen if alen < blen else blen
    cdef int c = memcmp(a, b, n)
    if c != 0:
        return c
    if alen < blen:
        return -1
    return 1 if alen > blen else 0


cdef int _put_payload(MDB_cursor *cur, const unsigned char *p, size_t n, bint append,
                      bint overwrite, size_t maxkey, wresult *r) noexcept nogil:
    """Parse one payload and put its records. 0, an LMDB error (> 0 or < 0 from LMDB), or
    -1 with ``r.perr`` set."""
    cdef size_t pos = _HEADER, koff = 0, prev_off = 0, prev_len = 0
    cdef uint64_t declared = 0, klen, vlen, rec = 0
    cdef unsigned int base = 0 if overwrite else MDB_NOOVERWRITE
    cdef MDB_val k, v
    cdef int rc, e, i
    cdef size_t lo, hi
    global _populate_ok
    if n < _HEADER:
        r.perr = PE_SHORT_HEADER
        return -1
    if memcmp(p, b"DSC1", 4) != 0:
        r.perr = PE_MAGIC
        return -1
    if p[4] or p[5] or p[6] or p[7]:
        r.perr = PE_FLAGS
        r.off = 4
        return -1
    for i in range(8):
        declared |= (<uint64_t>p[8 + i]) << (8 * i)
    while pos < n:
        r.rec = rec
        r.off = pos
        if rec >= declared:
            r.perr = PE_COUNT_HIGH
            r.val = declared
            return -1
        if p[pos] != 0:
            r.perr = PE_OP
            r.val = p[pos]
            return -1
        pos += 1
        e = PE_OK if get_uvarint(p, n, &pos, &klen) == UV_OK else PE_VARINT
        if e == PE_OK:
            e = PE_OK if get_uvarint(p, n, &pos, &vlen) == UV_OK else PE_VARINT
        if e != PE_OK:
            r.perr = e
            return -1
        if klen == 0 or klen > _MAX_KEY:
            r.perr = PE_KEYLEN
            r.val = klen
            return -1
        if klen > n - pos:
            r.perr = PE_TRUNC_KEY
            r.val = klen
            return -1
        koff = pos
        pos += klen
        if vlen > n - pos:
            r.perr = PE_TRUNC_VALUE
            r.val = vlen
            return -1
        if rec > 0 and _keycmp(p + prev_off, prev_len, p + koff, klen) >= 0:
            r.perr = PE_ORDER
            return -1
        if klen > maxkey:
            r.perr = PE_KEY_TOO_LONG
            r.val = klen
            return -1
        # MDB_RESERVE: LMDB returns where the value goes (in the map: MDB_WRITEMAP) and the
        # value is copied there here, which also tells the caller which pages were written
        k.mv_size = klen
        k.mv_data = <void *>(p + koff)
        v.mv_size = vlen
        v.mv_data = NULL
        if append:
            rc = mdb_cursor_put(cur, &k, &v, MDB_APPEND | MDB_RESERVE)
            if rc == MDB_KEYEXIST:   # at or before the last key: an ordinary put
                k.mv_data = <void *>(p + koff)
                v.mv_size = vlen
                v.mv_data = NULL
                rc = mdb_cursor_put(cur, &k, &v, base | MDB_RESERVE)
        else:
            rc = mdb_cursor_put(cur, &k, &v, base | MDB_RESERVE)
        if rc == 0:
            if vlen >= POPULATE_MIN and _populate_ok:
                # map the value's pages in one call instead of one write fault per page
                lo = (<size_t>v.mv_data + PAGE - 1) & ~(PAGE - 1)
                hi = (<size_t>v.mv_data + vlen) & ~(PAGE - 1)
                if hi > lo and madvise(<void *>lo, hi - lo, MADV_POPULATE_WRITE) != 0:
                    _populate_ok = 0    # refused (EINVAL before Linux 5.14): the copy faults
            if vlen:
                memcpy(v.mv_data, p + pos, vlen)
            if <size_t>v.mv_data < r.lo:
                r.lo = <size_t>v.mv_data
            if <size_t>v.mv_data + vlen > r.hi:
                r.hi = <size_t>v.mv_data + vlen
            r.records += 1
            r.nbytes += klen + vlen
        elif not (rc == MDB_KEYEXIST and not overwrite):
            return rc
        pos += vlen
        prev_off = koff
        prev_len = klen
        rec += 1
    if rec != declared:
        r.perr = PE_COUNT_LOW
        r.rec = rec
        r.off = n
        r.val = declared
        return -1
    return 0


cdef int _write_txn(MDB_env *env, MDB_dbi dbi, const span *spans, size_t nspans, bint append,
                    bint overwrite, wresult *r) noexcept nogil:
    """Every payload in one write transaction; committed only if all of it went in."""
    cdef MDB_txn *txn = NULL
    cdef MDB_cursor *cur = NULL
    cdef size_t j
    cdef size_t maxkey = <size_t>mdb_env_get_maxkeysize(env)
    cdef int rc
    r.records = 0
    r.nbytes = 0
    r.perr = PE_OK
    r.lo = <size_t>-1
    r.hi = 0
    r.remapped = False
    rc = mdb_txn_begin(env, NULL, 0, &txn)
    if rc == MDB_MAP_RESIZED:   # another process grew the map: adopt its size
        mdb_env_set_mapsize(env, 0)
        r.remapped = True
        rc = mdb_txn_begin(env, NULL, 0, &txn)
    if rc:
        return rc
    rc = mdb_cursor_open(txn, dbi, &cur)
    if rc:
        mdb_txn_abort(txn)
        return rc
    for j in range(nspans):
        r.pidx = j
        rc = _put_payload(cur, spans[j].p, spans[j].n, append, overwrite, maxkey, r)
        if rc:
            break
    if rc == 0:
        return mdb_txn_commit(txn)   # frees the cursor too
    mdb_cursor_close(cur)
    mdb_txn_abort(txn)
    return rc


cdef object _payload_error(wresult *r):
    cdef int e = r.perr
    where = f"payload {r.pidx}: record {r.rec} at byte offset {r.off}"
    if e == PE_SHORT_HEADER:
        return PayloadError(f"payload {r.pidx}: shorter than its 16-byte header", r.pidx, None, 0)
    if e == PE_MAGIC:
        return PayloadError(f"payload {r.pidx}: does not start with magic b'DSC1'", r.pidx,
                            None, 0)
    if e == PE_FLAGS:
        return PayloadError(f"payload {r.pidx}: header flags are not 0", r.pidx, None, 4)
    if e == PE_KEY_TOO_LONG:
        return LmdbKeyTooLong(f"{where}: key of {r.val} bytes is longer than LMDB's "
                              "key size limit")
    msgs = {
        PE_VARINT: "length varint is truncated, too long or not minimally encoded",
        PE_OP: f"unknown op {r.val} (only 0 = put is defined)",
        PE_KEYLEN: f"key length {r.val} is outside 1..65535",
        PE_TRUNC_KEY: f"key of {r.val} bytes runs past the end of the payload",
        PE_TRUNC_VALUE: f"value of {r.val} bytes runs past the end of the payload",
        PE_ORDER: "key is not greater than the previous key",
        PE_COUNT_HIGH: f"data continues after the {r.val} records the header declares",
        PE_COUNT_LOW: f"payload ends after {r.rec} records but the header declares {r.val}",
    }
    return PayloadError(f"{where}: {msgs.get(e, f'error {e}')}", r.pidx, r.rec, r.off)


cdef void _drop_written_pages(size_t lo, size_t hi) noexcept nogil:
    """After a commit, drop the page table entries of the map pages the values went to:
    written through the map, they would otherwise count in this process's resident set until
    it ends. The data stays in the page cache (dirty pages too) and comes back on access."""
    if hi <= lo:
        return
    lo = lo & ~(PAGE - 1)
    hi = (hi + PAGE - 1) & ~(PAGE - 1)
    madvise(<void *>lo, hi - lo, MADV_DONTNEED)


cdef class LmdbPayloadWriter:
    """An LMDB environment at ``path`` (created if missing) written from chunk payloads."""

    cdef MDB_env *env
    cdef MDB_dbi dbi
    cdef readonly str path
    cdef long _pid
    cdef object _claim
    cdef bint _registered
    cdef size_t _reserved     # bytes of data.mdb known to have blocks (reserved or written)
    cdef bint _opened         # mdb_env_open succeeded (else env may only be closed)
    cdef bint _writemap       # values are written through the map (MDB_WRITEMAP)
    cdef size_t _map_lo       # LMDB's read-only map of data.mdb (pwrite path), 0 if unknown
    cdef size_t _map_hi

    def __cinit__(self):
        self.env = NULL
        self._registered = False
        self._reserved = 0
        self._opened = False
        self._map_lo = 0
        self._map_hi = 0

    def __init__(self, path, *, size_t map_size=0, bint writemap=True):
        cdef int rc
        from dsbackup._ext import lmdbregistry
        from dsbackup.datastores import lmdbclaims

        self.path = os.path.abspath(os.fsdecode(os.fspath(path)))
        self._pid = os.getpid()
        os.makedirs(self.path, exist_ok=True)
        claim = lmdbclaims.claim(self.path, "dsbackup._ext.lmdbwrite")
        claim.__enter__()
        self._claim = claim
        try:
            lmdbregistry.register_foreign_open(self.path)
            self._registered = True
            if map_size == 0:
                data = os.path.join(self.path, "data.mdb")
                used = os.path.getsize(data) if os.path.isfile(data) else 0
                map_size = max(_INITIAL_MAP_SIZE, 2 * used)
            open_write_env(&self.env, &self.dbi, self.path, map_size, writemap=writemap)
            self._writemap = writemap
            self._opened = True
            self._find_map()
        except BaseException:
            self.close()
            raise

    def write(self, payloads, *, bint append=True, bint overwrite=True):
        """Put every record of ``payloads`` (buffers) in one write transaction; returns
        ``(records, key + value bytes)`` put. ``overwrite=False`` keeps existing values (those
        records are not counted). A malformed payload raises :class:`PayloadError` and writes
        nothing."""
        cdef list bufs = list(payloads)
        cdef size_t nspans = len(bufs), j
        cdef span *spans
        cdef const unsigned char[::1] mv
        cdef wresult r
        cdef int rc = 0, tries = 0
        cdef MDB_envinfo info
        self._check()
        if nspans == 0:
            return 0, 0
        keep = []
        spans = <span *>PyMem_Malloc(nspans * sizeof(span))
        if spans == NULL:
            raise MemoryError(f"LmdbPayloadWriter.write: cannot allocate {nspans} spans")
        try:
            total = 0
            for j in range(nspans):
                mv = bufs[j]
                keep.append(mv)
                spans[j].n = mv.shape[0]
                spans[j].p = &mv[0] if mv.shape[0] else NULL
                total += spans[j].n
            self._reserve(RESERVE_FACTOR * total + RESERVE_SLACK)
            while True:
                with nogil:
                    rc = _write_txn(self.env, self.dbi, spans, nspans, append, overwrite, &r)
                    if rc == 0 and self._writemap:
                        _drop_written_pages(r.lo, r.hi)
                if r.remapped:
                    self._find_map()
                if rc == 0:
                    if not self._writemap:
                        self._drop_read_pages()
                    return r.records, r.nbytes
                if rc == -1:
                    raise _payload_error(&r)
                if rc == MDB_MAP_FULL and tries < _MAX_GROWTHS:
                    tries += 1
                    mdb_env_info(self.env, &info)
                    rc = mdb_env_set_mapsize(self.env, info.me_mapsize * 2)
                    if rc:
                        raise _error(rc, f"{self.path}: cannot grow the map")
                    self._find_map()
                    continue
                raise _error(rc, f"{self.path}: LMDB write failed (payload {r.pidx}, "
                                 f"record {r.rec})")
        finally:
            PyMem_Free(spans)

    cdef _find_map(self):
        """Where LMDB maps data.mdb in this process (the pwrite path's read-only map), from
        /proc/self/maps: the mapping of the file's device and inode. Left unknown (no page is
        dropped) when it cannot be found."""
        cdef int fd = -1
        self._map_lo = self._map_hi = 0
        if self._writemap or mdb_env_get_fd(self.env, &fd) or fd < 0:
            return
        st = os.fstat(fd)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}".encode()
        ino = str(st.st_ino).encode()
        name = os.fsencode(os.path.realpath(os.path.join(self.path, "data.mdb")))
        try:
            with open("/proc/self/maps", "rb") as f:
                for line in f:
                    fields = line.split(None, 5)
                    # the file's device and inode; or its name (an overlay filesystem may
                    # show the device of the layer below)
                    if len(fields) >= 5 and fields[4] == ino and (
                            fields[3] == dev or (len(fields) == 6 and fields[5].strip() == name)):
                        lo, hi = (int(x, 16) for x in fields[0].split(b"-"))
                        if hi - lo > self._map_hi - self._map_lo:
                            self._map_lo, self._map_hi = lo, hi
        except OSError:
            self._map_lo = self._map_hi = 0

    cdef _drop_read_pages(self):
        """pwrite path, after a commit: unmap the pages LMDB read through its map (each
        transaction copies the pages it changes from there) and those the kernel's fault-around
        mapped beside them — the pages just written, in the page cache — so that the resident
        set does not grow with the data written. They stay in the page cache."""
        cdef size_t used
        cdef MDB_envinfo info
        if self._map_hi <= self._map_lo or mdb_env_info(self.env, &info):
            return
        if (info.me_mapsize + PAGE - 1) & ~(PAGE - 1) != self._map_hi - self._map_lo:
            return  # not the map found at open (every remap here looks it up again)
        used = used_bytes(self.env)
        if used == 0 or used > self._map_hi - self._map_lo:
            used = self._map_hi - self._map_lo
        with nogil:
            _drop_written_pages(self._map_lo, self._map_lo + used)

    cdef _reserve(self, size_t extra):
        """Reserve data.mdb's growth for the next write (reserve_growth, lmdbenv.pxi)."""
        self._reserved = reserve_growth(self.env, self.path, self._reserved, extra,
                                        LmdbNoSpace)

    def sync(self):
        """Force the written data to disk (commits are not synced one by one)."""
        cdef int rc
        self._check()
        with nogil:
            rc = mdb_env_sync(self.env, 1)
        if rc:
            raise _error(rc, f"{self.path}: sync")

    def is_empty(self):
        """True when the environment holds no record."""
        cdef MDB_txn *txn = NULL
        cdef MDB_cursor *cur = NULL
        cdef MDB_val k, v
        cdef int rc
        self._check()
        rc = mdb_txn_begin(self.env, NULL, MDB_RDONLY, &txn)
        if rc == MDB_MAP_RESIZED:
            mdb_env_set_mapsize(self.env, 0)
            self._find_map()
            rc = mdb_txn_begin(self.env, NULL, MDB_RDONLY, &txn)
        if rc:
            raise _error(rc, f"{self.path}: cannot begin a read transaction")
        rc = mdb_cursor_open(txn, self.dbi, &cur)
        if rc == 0:
            rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)
            mdb_cursor_close(cur)
        mdb_txn_abort(txn)
        if rc == MDB_NOTFOUND:
            return True
        if rc:
            raise _error(rc, f"{self.path}: cannot read")
        return False

    cdef _check(self):
        if self.env == NULL:
            raise ValueError("LmdbPayloadWriter is closed")
        if os.getpid() != self._pid:
            raise RuntimeError("LmdbPayloadWriter cannot be used after fork")

    @property
    def closed(self):
        return self.env == NULL

    def close(self):
        """Close the environment and release the claim on its path (idempotent)."""
        cdef size_t used
        if self.env != NULL:
            # an environment whose open failed has no map to ask about: only close it
            used = used_bytes(self.env) if self._opened else 0
            mdb_env_close(self.env)
            self.env = NULL
            if self._opened:
                truncate_to_used(self.path, used)  # gives back the unused reservation too
            self._opened = False
            self._reserved = 0
        if self._registered:
            self._registered = False
            from dsbackup._ext import lmdbregistry

            lmdbregistry.unregister_foreign_open(self.path)
        if self._claim is not None:
            claim, self._claim = self._claim, None
            claim.__exit__(None, None, None)

    def __dealloc__(self):
        if os.getpid() == self._pid:
            try:
                self.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
