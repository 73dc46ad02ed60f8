"""Scan a key range of an LMDB environment into finished chunks with liblmdb (GIL released).

For worker processes. liblmdb here and py-lmdb are separate copies of LMDB, so one process must
never open the same environment twice: each scanner claims its environment in the process-wide
registry (lmdbregistry.pyx, whose API this module re-exports: :func:`register_foreign_open`,
:func:`unregister_foreign_open`, :func:`open_environments`, DoubleOpenError). An environment is
never used after ``fork``: inherited scanners refuse to work (and do not touch LMDB when
collected). The planner walk (keys and value sizes only: stripes, boundaries, chunk plans) is
lmdbplan.pxi.
"""

import os

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy
from posix.mman cimport MADV_DONTNEED, madvise
from posix.unistd cimport pread

from compiler cimport __builtin_prefetch
from compress cimport ds_chunk_level_ok, ds_compress_api
from framing cimport (
    FR_EKEYLEN,
    FR_ENOMEM,
    FR_EORDER,
    FR_MAX_KEY,
    FR_OK,
    ds_chunk,
    ds_chunker,
    ds_framing_api,
)
from frameutil cimport key_cmp
from libxxhash cimport XXH3_64bits
from liblmdb cimport (
    MDB_DUPSORT,
    MDB_FIRST,
    MDB_LAST,
    MDB_NEXT,
    MDB_PREV,
    MDB_NORDAHEAD,
    MDB_NOSUBDIR,
    MDB_NOTFOUND,
    MDB_NOTLS,
    MDB_RDONLY,
    MDB_SET_RANGE,
    MDB_cursor,
    MDB_cursor_op,
    MDB_dbi,
    MDB_env,
    MDB_stat,
    MDB_txn,
    MDB_val,
    mdb_cursor_close,
    mdb_cursor_get,
    mdb_cursor_open,
    mdb_cursor_renew,
    mdb_dbi_flags,
    mdb_dbi_open,
    mdb_env_close,
    mdb_env_create,
    mdb_env_get_fd,
    mdb_env_open,
    mdb_env_stat,
    mdb_env_set_maxdbs,
    mdb_txn_abort,
    mdb_txn_begin,
    mdb_txn_id,
    mdb_txn_renew,
    mdb_txn_reset,
)
from lmdberror cimport lmdb_message
from planner cimport ds_plan, ds_planner, ds_planner_api

from dsbackup._ext import compress as _compress_mod
from dsbackup._ext import framing as _framing_mod
from dsbackup._ext import planner as _planner_mod
from dsbackup._ext.lmdbregistry import (  # the registry's API, re-exported
    DoubleOpenError,
    claim_own,
    open_environments,
    register_foreign_open,
    release_own,
    unregister_foreign_open,
)
from dsbackup.errors import DatastoreError

cdef const ds_framing_api *FAPI = <const ds_framing_api *>PyCapsule_GetPointer(
    _framing_mod._C_API, "dsbackup._ext.framing._C_API")
cdef const ds_planner_api *PAPI = <const ds_planner_api *>PyCapsule_GetPointer(
    _planner_mod._C_API, "dsbackup._ext.planner._C_API")
cdef const ds_compress_api *CAPI = <const ds_compress_api *>PyCapsule_GetPointer(
    _compress_mod._C_API, "dsbackup._ext.compress._C_API")


class LmdbError(DatastoreError, OSError):
    """LMDB reported an error (exit 2): the message names the environment, the operation,
    and LMDB's text beside its return code. A system error (a positive code: no such file,
    permission denied) is raised as the matching OSError instead (FileNotFoundError ...)."""

    description = "LMDB error"


cdef uint64_t TRIM_BYTES = 64 << 20
cdef size_t PAGE = 4096


cdef inline void trim_map(size_t lo, size_t hi) noexcept nogil:
    """Drop the page table entries of [lo, hi) of LMDB's read-only shared file mapping: the
    data stays in the page cache and comes back on the next access."""
    if hi <= lo:
        return
    lo = lo & ~(PAGE - 1)
    hi = (hi + PAGE - 1) & ~(PAGE - 1)
    madvise(<void *>lo, hi - lo, MADV_DONTNEED)


# Values of PREAD_MIN bytes and more (overflow pages) are read with pread straight into the
# chunk instead of through the map: no page faults, no page table entries to map and trim,
# the kernel's copy instead of ours (docs/PERFORMANCE.md, "Blocks backup against the
# ceiling"). Anything unexpected (another page size, a page that does not look like LMDB's,
# a failed or short read) falls back to the copy from the map.
cdef size_t PREAD_MIN = 16384
cdef size_t OVERFLOW_HDR = 16  # an overflow value starts after its first page's header


cdef inline size_t map_base_of(const unsigned char *key) noexcept nogil:
    """The address of page 0 of the map, from the header of the leaf page that holds `key`
    (its page number); 0 if that page does not look like a leaf."""
    cdef size_t page = <size_t>key & ~(PAGE - 1)
    cdef uint64_t pgno
    cdef unsigned short flags
    memcpy(&pgno, <const void *>page, 8)
    memcpy(&flags, <const void *>(page + 10), 2)
    if not (flags & 0x02) or pgno > page // PAGE:
        return 0
    return page - <size_t>pgno * PAGE


cdef inline bint read_full(int fd, unsigned char *dst, size_t n, size_t off) noexcept nogil:
    cdef ssize_t got
    while n:
        got = pread(fd, dst, n, off)
        if got <= 0:
            if got < 0 and errno == EINTR:
                continue
            return False
        dst += got
        n -= got
        off += got
    return True


cdef inline const unsigned char *nodes_ahead(const unsigned char *key, size_t klen,
                                             size_t vlen) noexcept nogil:
    """Where the node three records after the one at ``key`` probably starts, worth a
    prefetch; NULL if not. A leaf filled in key order (appends, loads) holds the next records'
    nodes just below this one. Only for values inline in the node, and only within this page
    (the addresses below it belong to some other page, if any, that the walk may never read)."""
    cdef const unsigned char *pf
    if vlen >= PAGE:
        return NULL
    pf = key - 3 * (klen + vlen + 8)
    if (<size_t>pf & ~(PAGE - 1)) != (<size_t>key & ~(PAGE - 1)):
        return NULL
    return pf


cdef unsigned int AHEAD = 3  # records: a framed record costs ~100 ns, a miss about as much


cdef inline unsigned int page_u16(const unsigned char *p) noexcept nogil:
    cdef unsigned short v
    memcpy(&v, p, 2)
    return v


cdef inline const unsigned char *node_ahead(const unsigned char *key, size_t *page,
                                            unsigned int *ki) noexcept nogil:
    """Where the node AHEAD records after the one holding ``key`` starts, worth a prefetch;
    NULL past the end of its leaf page. A leaf page lists its nodes' offsets in key order
    (LMDB's mp_ptrs, after the 16-byte page header), whatever order they were written in:
    a store filled in random order keeps them scattered in the page, where nodes_ahead's
    guess misses. ``page`` and ``ki`` carry the position from one call to the next (a walk
    steps through a page one index at a time). Reads only the page the key lies in; a wrong
    answer costs a useless prefetch, never a fault."""
    cdef size_t base = <size_t>key & ~(PAGE - 1)
    cdef const unsigned char *p = <const unsigned char *>base
    cdef size_t off = <size_t>key - 8 - base  # the node header is 8 bytes before its key
    cdef unsigned int lower, n, i
    if <size_t>key < base + 8:
        return NULL
    lower = page_u16(p + 12)
    if lower < 16 or lower > PAGE:
        return NULL
    n = (lower - 16) >> 1
    if base == page[0] and ki[0] + 1 < n and page_u16(p + 16 + 2 * (ki[0] + 1)) == off:
        ki[0] += 1
    else:
        i = 0
        while i < n and page_u16(p + 16 + 2 * i) != off:
            i += 1
        if i == n:
            page[0] = 0
            return NULL
        page[0] = base
        ki[0] = i
    if ki[0] + AHEAD >= n:
        return NULL
    off = page_u16(p + 16 + 2 * (ki[0] + AHEAD))
    if off < 16 or off + 8 > PAGE:
        return NULL
    return p + off


cdef inline int key_order(const unsigned char *a, size_t alen, const unsigned char *b,
                          size_t blen) noexcept nogil:
    """FR_OK when key a < key b (bytewise), else FR_EORDER."""
    return FR_OK if key_cmp(a, alen, b, blen) < 0 else FR_EORDER


cdef object _lmdb_error(int rc, str what):
    msg = lmdb_message(rc, what)
    if rc > 0:
        return OSError(rc, msg)
    return LmdbError(msg)


cdef class LmdbRangeScanner:
    """Chunks of the key range ``[start, end)`` of one read transaction (a fixed snapshot).

    ``level`` 0..9 (or a zstd chunk level, dsbackup.codec) compresses each chunk
    (``Chunk.body``); -1 only frames it (body None).
    """

    cdef MDB_env *env
    cdef MDB_txn *txn
    cdef MDB_cursor *cur
    cdef MDB_dbi dbi
    cdef ds_chunker c
    cdef bint chunker_ready, started, done, busy
    cdef bytes start
    cdef bytes end
    cdef int level
    cdef object _exclude
    cdef readonly str path
    cdef str _key
    cdef long _pid
    cdef uint64_t chunk_size, chunk_max_bytes
    cdef bint catalog
    cdef uint64_t prior_excluded_records, prior_excluded_bytes, prior_records, prior_raw
    cdef MDB_cursor *pcur          # keys-only planning walk (plan_chunks), own cursor
    cdef ds_planner pl
    cdef bint planner_ready, pstarted, pdone
    cdef bytes pstart              # where the planning walk begins (b"": the first key)
    # The pages of the map this scanner has read stay mapped (and count in its resident set)
    # until dropped: every TRIM_BYTES scanned, the span of the map read since the last trim is
    # released with MADV_DONTNEED (the data stays in the page cache), so the resident set does
    # not grow with the store.
    cdef size_t trim_lo, trim_hi  # span of map addresses read since the last trim
    cdef uint64_t since_trim
    cdef int dfd  # the data file, for pread of large values (-1: read them through the map)

    cdef inline int _append_read(self, const unsigned char *key, size_t klen,
                                 const MDB_val *v, ds_chunk *out) noexcept nogil:
        """chunker_append of a large value, read with pread into its place in the chunk."""
        cdef uint64_t before = self.c.records, h
        cdef int r = FAPI.chunker_append(&self.c, key, klen, NULL, v.mv_size, out)
        cdef unsigned char *dst
        cdef size_t base, addr = <size_t>v.mv_data, i
        if r < 0 or self.c.records == before:
            return r  # failed, or excluded: nothing reserved
        dst = self.c.cur.payload.p + self.c.cur.payload.len - v.mv_size
        base = map_base_of(key)
        if (base == 0 or addr <= base or (addr - base) % PAGE != OVERFLOW_HDR
                or not read_full(self.dfd, dst, v.mv_size, addr - base)):
            memcpy(dst, v.mv_data, v.mv_size)
        if self.catalog:
            h = XXH3_64bits(dst, v.mv_size)
            dst = self.c.cur.catalog.p + self.c.cur.catalog.len - 8
            for i in range(8):
                dst[i] = (h >> (8 * i)) & 0xff
        return r

    cdef inline void _note_read(self, const MDB_val *k, const MDB_val *v) noexcept nogil:
        """Widen the span of the map read since the last trim by a node just read."""
        cdef size_t klo = <size_t>k.mv_data, vlo = <size_t>v.mv_data
        self.since_trim += k.mv_size + v.mv_size
        if klo < self.trim_lo:
            self.trim_lo = klo
        if vlo < self.trim_lo:
            self.trim_lo = vlo
        if klo + k.mv_size > self.trim_hi:
            self.trim_hi = klo + k.mv_size
        if vlo + v.mv_size > self.trim_hi:
            self.trim_hi = vlo + v.mv_size

    cdef inline void _trim_if_due(self) noexcept nogil:
        """Drop the span read since the last trim once TRIM_BYTES have been read (nothing may
        point into the map: whatever was read is copied by now)."""
        if self.since_trim >= TRIM_BYTES:
            trim_map(self.trim_lo, self.trim_hi)
            self.since_trim = 0
            self.trim_lo = <size_t>-1
            self.trim_hi = 0

    def __cinit__(self):
        self.env = NULL
        self.txn = NULL
        self.cur = NULL
        self.pcur = NULL
        self.chunker_ready = False
        self.planner_ready = False
        self.pstart = b""
        self._key = None
        self.trim_lo = <size_t>-1
        self.trim_hi = 0
        self.since_trim = 0
        self.dfd = -1

    def __init__(self, path, bytes start=b"", end=None, *, chunk_size, chunk_max_bytes,
                 int level, exclude=None, bint catalog=False, bint subdir=True,
                 db_name=None, bint readahead=True):
        cdef unsigned int flags = MDB_RDONLY | MDB_NOTLS
        cdef unsigned int dflags = 0
        cdef int rc
        cdef const char *cname = NULL
        cdef bytes bpath, bname
        cdef int fd
        cdef MDB_stat st
        if not (level == -1 or ds_chunk_level_ok(level)):
            raise ValueError(f"level must be -1 (frame only), 0..9 or a chunk level "
                             f"(dsbackup.codec), got {level}")
        if chunk_size < 1 or chunk_max_bytes < 1:
            raise ValueError("chunk_size and chunk_max_bytes must be >= 1")
        if end is not None and not isinstance(end, bytes):
            raise TypeError("end must be bytes or None")
        self.path = os.fsdecode(os.fspath(path))
        self.start = start
        self.end = end
        self.level = level
        self._exclude = exclude
        self.chunk_size = chunk_size
        self.chunk_max_bytes = chunk_max_bytes
        self.catalog = catalog
        self._key = claim_own(path, "LmdbRangeScanner")
        self._pid = os.getpid()
        try:
            if FAPI.chunker_init(&self.c, chunk_size, chunk_max_bytes,
                                 FAPI.matcher_of(exclude), catalog) != FR_OK:
                raise MemoryError("LmdbRangeScanner: cannot allocate the chunker")
            self.chunker_ready = True
            rc = mdb_env_create(&self.env)
            if rc:
                raise _lmdb_error(rc, f"{self.path}: mdb_env_create")
            if db_name is not None:
                rc = mdb_env_set_maxdbs(self.env, 1)
                if rc:
                    raise _lmdb_error(rc, f"{self.path}: mdb_env_set_maxdbs")
            if not subdir:
                flags |= MDB_NOSUBDIR
            if not readahead:
                flags |= MDB_NORDAHEAD
            bpath = os.fsencode(self.path)
            rc = mdb_env_open(self.env, bpath, flags, 0o644)
            if rc:
                raise _lmdb_error(rc, f"{self.path}: cannot open LMDB environment read-only")
            rc = mdb_txn_begin(self.env, NULL, MDB_RDONLY, &self.txn)
            if rc:
                raise _lmdb_error(rc, f"{self.path}: cannot begin a read transaction")
            if (mdb_env_get_fd(self.env, &fd) == 0 and mdb_env_stat(self.env, &st) == 0
                    and st.ms_psize == PAGE and not os.environ.get("DSBACKUP_LMDB_MAP_READS")):
                self.dfd = fd
            if db_name is not None:
                bname = db_name if isinstance(db_name, bytes) else str(db_name).encode()
                cname = bname
            rc = mdb_dbi_open(self.txn, cname, 0, &self.dbi)
            if rc:
                raise _lmdb_error(rc, f"{self.path}: cannot open database {db_name!r}")
            mdb_dbi_flags(self.txn, self.dbi, &dflags)
            if dflags & MDB_DUPSORT:
                raise LmdbError(f"{self.path}: database {db_name!r} is MDB_DUPSORT, which "
                                "dsbackup does not back up")
            rc = mdb_cursor_open(self.txn, self.dbi, &self.cur)
            if rc:
                raise _lmdb_error(rc, f"{self.path}: cannot open a cursor")
        except BaseException:
            self.close()
            raise

    @property
    def preads_values(self) -> bool:
        """Whether values of PREAD_MIN bytes and more are read with pread (not the map)."""
        return self.dfd >= 0

    @property
    def txn_id(self) -> int:
        """Id of the snapshot this scanner reads (``mdb_txn_id``)."""
        self._check()
        return mdb_txn_id(self.txn)

    @property
    def records(self) -> int:
        """Records framed so far, over every range this scanner has scanned."""
        return self.prior_records + (self.c.records if self.chunker_ready else 0)

    @property
    def raw_bytes(self) -> int:
        return self.prior_raw + (self.c.raw_bytes if self.chunker_ready else 0)

    @property
    def excluded_records(self) -> int:
        return self.prior_excluded_records + (self.c.excluded_records if self.chunker_ready
                                              else 0)

    @property
    def excluded_bytes(self) -> int:
        return self.prior_excluded_bytes + (self.c.excluded_bytes if self.chunker_ready else 0)

    cdef _new_chunker(self):
        """Drop any partly built chunk and start a fresh chunker (counters are kept)."""
        if self.chunker_ready:
            self.prior_records += self.c.records
            self.prior_raw += self.c.raw_bytes
            self.prior_excluded_records += self.c.excluded_records
            self.prior_excluded_bytes += self.c.excluded_bytes
            FAPI.chunker_free(&self.c)
            self.chunker_ready = False
        if FAPI.chunker_init(&self.c, self.chunk_size, self.chunk_max_bytes,
                             FAPI.matcher_of(self._exclude), self.catalog) != FR_OK:
            raise MemoryError("LmdbRangeScanner: cannot allocate the chunker")
        self.chunker_ready = True

    def reset(self, bytes start, end=None) -> None:
        """Scan ``[start, end)`` next, in the same snapshot. ``start`` must be b"" or a
        natural chunk boundary for the chunks to match a single scan's."""
        self._check()
        if self.busy:
            raise RuntimeError(f"{self.path}: scanner is being used by another thread")
        if end is not None and not isinstance(end, bytes):
            raise TypeError("end must be bytes or None")
        self._new_chunker()
        self.start = start
        self.end = end
        self.started = False
        self.done = False

    def set_end(self, bytes end) -> None:
        """Stop the current range before ``end`` (a natural boundary past the chunks already
        returned). A chunk starting at or after ``end`` may still come back once; callers
        drop it."""
        self._check()
        if self.end is None or end < self.end:
            self.end = end

    def renew(self) -> None:
        """Move to the newest snapshot (a new read transaction) and forget the range."""
        cdef int rc
        self._check()
        if self.busy:
            raise RuntimeError(f"{self.path}: scanner is being used by another thread")
        plan_drop(self)
        mdb_txn_reset(self.txn)
        rc = mdb_txn_renew(self.txn)
        if rc:
            raise _lmdb_error(rc, f"{self.path}: cannot renew the read transaction")
        rc = mdb_cursor_renew(self.txn, self.cur)
        if rc:
            raise _lmdb_error(rc, f"{self.path}: cannot renew the cursor")
        self.reset(self.start, self.end)

    # ---- the planner walk: keys and value sizes only, values never read (lmdbplan.pxi)

    def last_key_before(self, end=None):
        """The greatest key < ``end`` (or the last key when ``end`` is None) in this
        snapshot, or None."""
        return walk_last_key_before(self, end)

    def next_stripe_end(self, uint64_t min_records, uint64_t min_bytes):
        """Planning: walk keys (and value sizes, without reading values) from where the last
        call stopped until at least ``min_records`` records or ``min_bytes`` key+value bytes
        have passed, then on to the next natural chunk boundary; return that key, which ends
        this stripe and starts the next. None when the store ends first."""
        return walk_stripe_end(self, min_records, min_bytes)

    def stripe_hints(self, uint64_t min_records, uint64_t min_bytes):
        """Planning without a walk of every key: the first key of every few leaf pages (about
        ``min_records`` records or ``min_bytes`` bytes apart), read from the snapshot's branch
        pages; None when this store's layout is not one read so (lmdbhints.pxi). Each hint
        becomes a stripe end through ``snap``."""
        return walk_leaf_hints(self, min_records, min_bytes)

    def snap(self, bytes key):
        """The first natural chunk boundary >= ``key`` that the exclude patterns keep (where
        a scan's chunk starts), or None when the store ends first."""
        return walk_snap(self, key)

    def boundary_after(self, bytes key, end=None, uint64_t max_keys=200000):
        """The first key >= ``key`` and < ``end`` where a chunk starts by content
        (XXH3-64(k) % chunk_size == 0), looking at most ``max_keys`` keys; or None."""
        return walk_boundary_after(self, key, end, max_keys)

    @property
    def planned_excluded(self) -> tuple:
        """(records, bytes) the planning walk excluded so far."""
        if not self.planner_ready:
            return (0, 0)
        return (self.pl.excluded_records, self.pl.excluded_bytes)

    def plan_chunks(self, Py_ssize_t max_plans=4096):
        """Planning for incremental backups: continue a keys-only walk of the whole snapshot
        (its own cursor; value sizes come from node headers, values are not read) and return
        up to ``max_plans`` chunk plans ``(first_key, last_key, record_count, payload_len,
        keys_xxh3, raw_bytes)``: exactly the chunks a scan of the whole store makes. An empty
        list once the walk is over."""
        return walk_plan_chunks(self, max_plans)

    def plan_from(self, bytes start) -> None:
        """Begin the planning walk at the first key >= ``start`` (a chunk starts there; a
        resumed incremental backup, docs/FORMAT.md §11.5), before the first plan_chunks."""
        self._check()
        if self.pstarted:
            raise RuntimeError(f"{self.path}: the planning walk has already begun")
        self.pstart = start

    cdef _check(self):
        if self.txn == NULL:
            raise ValueError(f"{self.path}: scanner is closed")
        if self._pid != os.getpid():
            raise RuntimeError(f"{self.path}: scanner was inherited across fork; LMDB "
                               "environments must not be used in a child process")

    def next_chunk(self, into=None):
        """The next chunk of the range, or None when the range is exhausted.

        With ``into`` (a writable contiguous buffer) the body is compressed straight into it
        when it surely fits; the chunk's ``body.data`` is then a memoryview of ``into``
        (otherwise ``bytes``, as without it)."""
        cdef MDB_val k, v
        cdef MDB_cursor_op op
        cdef ds_chunk out
        cdef int rc = 0, r = 0, got = 0, cmp, in_place = 0
        cdef unsigned char[::1] dst
        cdef unsigned char *dst_p = NULL
        cdef size_t dst_n = 0
        cdef const unsigned char *endp = NULL
        cdef const unsigned char *startp = self.start
        cdef size_t endn = 0, n, startn = len(self.start), prevn = 0
        cdef const unsigned char *prevp = NULL
        cdef const unsigned char *pf
        cdef size_t pf_page = 0
        cdef unsigned int pf_ki = 0
        self._check()
        if self.busy:
            raise RuntimeError(f"{self.path}: scanner is being used by another thread")
        if self.end is not None:
            endp = self.end
            endn = len(self.end)
        if into is not None:
            dst = into
            dst_n = dst.shape[0]
            if dst_n:
                dst_p = &dst[0]
        self.busy = True
        try:
            with nogil:
                while not self.done:
                    if self.started:
                        op = MDB_NEXT
                    elif startn:
                        op = MDB_SET_RANGE
                        k.mv_data = <void *>startp
                        k.mv_size = startn
                    else:
                        op = MDB_FIRST
                    self.started = True
                    rc = mdb_cursor_get(self.cur, &k, &v, op)
                    if rc == MDB_NOTFOUND:
                        rc = 0
                        self.done = True
                        break
                    if rc:
                        break
                    if endp != NULL:
                        n = k.mv_size if k.mv_size < endn else endn
                        cmp = memcmp(k.mv_data, endp, n)
                        if cmp > 0 or (cmp == 0 and k.mv_size >= endn):
                            self.done = True
                            break
                    # keys point into the snapshot's map, valid until the transaction ends, so
                    # order is checked against the previous record's pointer, not a copy
                    if k.mv_size == 0 or k.mv_size > FR_MAX_KEY:
                        r = FR_EKEYLEN
                        break
                    if prevp != NULL:
                        r = key_order(prevp, prevn, <const unsigned char *>k.mv_data, k.mv_size)
                    elif self.c.has_prev:
                        r = key_order(self.c.prev.p, self.c.prev.len,
                                      <const unsigned char *>k.mv_data, k.mv_size)
                    if r < 0:
                        break
                    prevp = <const unsigned char *>k.mv_data
                    prevn = k.mv_size
                    pf = node_ahead(<const unsigned char *>k.mv_data, &pf_page, &pf_ki)
                    if pf != NULL:  # whole nodes: their values are copied too
                        __builtin_prefetch(pf)
                        __builtin_prefetch(pf + 64)
                        __builtin_prefetch(pf + 128)
                        __builtin_prefetch(pf + 192)
                        __builtin_prefetch(pf + 256)
                    if v.mv_size >= PREAD_MIN and self.dfd >= 0:
                        # the value is read with pread, but its first overflow page was
                        # faulted in through the map (the cursor read its header), and with
                        # it the kernel maps cached neighbours (fault-around): its span and
                        # size count toward the next trim as a value read from the map does
                        self._note_read(&k, &v)
                        r = self._append_read(prevp, prevn, &v, &out)
                    else:
                        self._note_read(&k, &v)
                        r = FAPI.chunker_append(&self.c, prevp, prevn,
                                                <const unsigned char *>v.mv_data, v.mv_size,
                                                &out)
                    if r < 0:
                        break
                    if r == 1:
                        got = 1
                        break
                if prevp != NULL and FAPI.chunker_set_prev(&self.c, prevp, prevn) != FR_OK:
                    r = FR_ENOMEM
                if rc == 0 and r >= 0 and not got and self.done:
                    got = FAPI.chunker_finish(&self.c, &out)
                if got and self.level >= 0:
                    if dst_p != NULL and CAPI.body_bound(out.payload.len, 512) <= dst_n:
                        # the engine writes into the caller's buffer: it never reallocates
                        # a buffer of body_bound bytes, and it is detached before release
                        out.body.data = dst_p
                        out.body.cap = dst_n
                        in_place = 1
                    r = FAPI.chunk_compress(&self.c, &out, self.level)
                    if r < 0:
                        if in_place:
                            out.body.data = NULL
                            out.body.cap = 0
                        FAPI.chunk_free(&out)
                        got = 0
                if r >= 0 and rc == 0:
                    # the records are copied into the chunk: nothing points into the map now
                    self._trim_if_due()
        finally:
            self.busy = False
        if rc:
            raise _lmdb_error(rc, f"{self.path}: cursor read failed")
        if r < 0:
            raise FAPI.chunker_error(&self.c, r, PyBytes_FromStringAndSize(
                <const char *>k.mv_data, k.mv_size), -1)
        if not got:
            return None
        body = None
        if in_place:
            body = CAPI.body_view(&out.body, into)
            out.body.data = NULL
            out.body.cap = 0
            out.has_body = 0
        try:
            return FAPI.chunk_to_py(&out, body)
        finally:
            FAPI.chunk_release(&self.c, &out)

    def __iter__(self):
        while True:
            chunk = self.next_chunk()
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        """End the read transaction and close the environment (idempotent)."""
        inherited = self._key is not None and self._pid != os.getpid()
        if not inherited:
            plan_drop(self)
            if self.cur != NULL:
                mdb_cursor_close(self.cur)
            if self.txn != NULL:
                mdb_txn_abort(self.txn)
            if self.env != NULL:
                mdb_env_close(self.env)
        self.cur = NULL
        self.txn = NULL
        self.env = NULL
        self.dfd = -1
        if self.chunker_ready:
            FAPI.chunker_free(&self.c)
            self.chunker_ready = False
        if self._key is not None:
            if not inherited:
                release_own(self._key)
            self._key = None

    def __reduce__(self):
        raise TypeError("an LmdbRangeScanner holds an open environment and cannot be pickled")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __dealloc__(self):
        if self._key is not None and self._pid != os.getpid():
            return  # never touch an environment inherited across fork
        if self.pcur != NULL:
            mdb_cursor_close(self.pcur)
        if self.planner_ready:
            PAPI.planner_free(&self.pl)
        if self.cur != NULL:
            mdb_cursor_close(self.cur)
        if self.txn != NULL:
            mdb_txn_abort(self.txn)
        if self.env != NULL:
            mdb_env_close(self.env)
        if self.chunker_ready:
            FAPI.chunker_free(&self.c)
        if self._key is not None:
            release_own(self._key, False)


include "lmdbplan.pxi"
include "lmdbhints.pxi"
