# Stripe hints from LMDB's branch pages (included by lmdbscan.pyx after lmdbplan.pxi).
#
# The planner of a parallel backup used to walk every key of the store to cut stripes (a
# cursor step and a cache miss per record: ~0.1 CPU-s per million small records, all of it
# done again by the workers). A stripe may end at any natural boundary (docs/FORMAT.md §4.1:
# XXH3-64(k) % chunk_size == 0, kept by the exclude patterns), so its size only needs to be
# about right. walk_leaf_hints reads the branch pages of the snapshot (about one page in a
# hundred) and returns the first key of every L-th leaf page, L leaves being about a stripe's
# worth of records; walk_snap then moves from each hint to the next natural boundary with a
# cursor. The hints are only hints: a page this code misreads changes how big the stripes
# are, never where a chunk ends. Anything it does not recognise (another page size, values
# in overflow pages, a named or non-bytewise database, a snapshot meta it cannot match) makes
# walk_leaf_hints return None and the caller walk every key as before.

from libc.string cimport memcpy
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, mmap, munmap

from liblmdb cimport MDB_stat, mdb_env_get_fd, mdb_env_stat

cdef size_t PAGEHDRSZ = 16       # mp_pgno 8, mp_pad 2, mp_flags 2, mp_lower 2, mp_upper 2
cdef unsigned int P_BRANCH = 0x01
cdef unsigned int P_LEAF = 0x02
cdef unsigned int MDB_MAGIC = 0xBEEFC0DE
cdef unsigned int MDB_DATA_VERSION = 1
cdef unsigned int MAIN_DBI = 1
# MDB_meta after the page header: magic u32, version u32, address, mapsize, dbs[2] (48 bytes
# each: pad u32, flags u16, depth u16, branch, leaf, overflow pages, entries, root), last
# page, txnid
cdef size_t META_DBS = 24
cdef size_t META_LAST_PG = 120
cdef size_t META_TXNID = 128
cdef size_t DB_SIZE = 48
cdef unsigned int DB_KEY_FLAGS = 0x02 | 0x04 | 0x08  # REVERSEKEY, DUPSORT, INTEGERKEY
cdef int MAX_DEPTH = 64


cdef inline uint64_t _u64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline unsigned int _u32(const unsigned char *p) noexcept nogil:
    cdef unsigned int v
    memcpy(&v, p, 4)
    return v


cdef inline unsigned int _u16(const unsigned char *p) noexcept nogil:
    cdef unsigned short v
    memcpy(&v, p, 2)
    return v


cdef const unsigned char *_meta_of(const unsigned char *base, size_t txnid) noexcept nogil:
    """The meta page (0 or 1) of snapshot `txnid`, its MDB_meta; NULL if neither is."""
    cdef const unsigned char *m
    cdef int i
    for i in range(2):
        m = base + i * PAGE + PAGEHDRSZ
        if (_u32(m) == MDB_MAGIC and _u32(m + 4) == MDB_DATA_VERSION
                and _u64(m + META_TXNID) == txnid):
            return m
    return NULL


cdef object walk_leaf_hints(LmdbRangeScanner s, uint64_t min_records, uint64_t min_bytes):
    """The first key of every L-th leaf page, in key order (a list of bytes, maybe empty),
    L leaves holding about ``min_records`` records or ``min_bytes`` bytes; None when this
    store's layout is not one read here (see the top of this file)."""
    cdef MDB_stat st
    cdef MDB_cursor *cur = NULL
    cdef MDB_val k, v
    cdef int rc
    cdef int fd = -1
    cdef size_t size
    cdef void *base
    s._check()
    if s.dbi != MAIN_DBI or sizeof(size_t) != 8:  # (the offsets above are a 64-bit build's)
        return None
    if mdb_env_stat(s.env, &st) or st.ms_psize != PAGE:
        return None
    rc = mdb_cursor_open(s.txn, s.dbi, &cur)
    if rc:
        raise _lmdb_error(rc, f"{s.path}: cannot open a cursor")
    try:
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)
    finally:
        mdb_cursor_close(cur)
    if rc == MDB_NOTFOUND:
        return []
    if rc:
        raise _lmdb_error(rc, f"{s.path}: cursor read failed")
    # The pages are read through a map of our own of the file as it is now (LMDB never
    # shortens it): its base and size are known, where LMDB's map base could only be guessed
    # from a page number in a page header (a damaged one moved the base into the map, and
    # pages past the file's end, still in LMDB's larger map, raised SIGBUS).
    if mdb_env_get_fd(s.env, &fd) != 0 or fd < 0:
        return None
    size = os.fstat(fd).st_size
    if size < 3 * PAGE:
        return None
    base = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0)
    if base == MAP_FAILED:
        return None
    try:
        return _walk_mapped(<const unsigned char *>base, size // PAGE, mdb_txn_id(s.txn),
                            min_records, min_bytes)
    finally:
        munmap(base, size)


cdef object _walk_mapped(const unsigned char *base, uint64_t file_pages, size_t txnid,
                         uint64_t min_records, uint64_t min_bytes):
    """walk_leaf_hints over the file's first ``file_pages`` pages mapped at ``base``."""
    cdef int top
    cdef const unsigned char *meta
    cdef const unsigned char *db
    cdef const unsigned char *page
    cdef const unsigned char *node
    cdef uint64_t pgno, last_pg, leaves, entries, per_leaf, want, count = 0, visited = 0
    cdef uint64_t branch_pages
    cdef unsigned int depth, n, lower, upper, off, ksize
    cdef uint64_t stack_pg[64]
    cdef unsigned int stack_i[64]
    meta = _meta_of(base, txnid)
    if meta == NULL:
        return None
    last_pg = _u64(meta + META_LAST_PG)
    if last_pg < 2 or last_pg >= file_pages:
        return None
    db = meta + META_DBS + MAIN_DBI * DB_SIZE
    depth = _u16(db + 6)
    branch_pages = _u64(db + 8)
    leaves = _u64(db + 16)
    entries = _u64(db + 32)
    if (_u16(db + 4) & DB_KEY_FLAGS or _u64(db + 24) != 0
            or depth < 2 or depth > MAX_DEPTH or leaves == 0):
        return None  # (values in overflow pages: a leaf's bytes say nothing of a stripe's)
    per_leaf = entries // leaves if entries >= leaves else 1
    want = (min_records + per_leaf - 1) // per_leaf
    if (min_bytes + PAGE - 1) // PAGE < want:
        want = (min_bytes + PAGE - 1) // PAGE
    if want < 1:
        want = 1
    hints = []
    # depth-first over the branch pages, down to those whose children are leaves
    top = 0
    stack_pg[0] = _u64(db + 40)
    stack_i[0] = 0
    while top >= 0:
        pgno = stack_pg[top]
        if pgno < 2 or pgno > last_pg:
            return None
        page = base + pgno * PAGE
        lower = _u16(page + 12)
        upper = _u16(page + 14)
        if (not (_u16(page + 10) & P_BRANCH) or _u64(page) != pgno or lower < PAGEHDRSZ + 2
                or lower > upper or upper > PAGE):
            return None
        n = (lower - PAGEHDRSZ) >> 1
        if stack_i[top] >= n:
            top -= 1
            continue
        if stack_i[top] == 0:
            visited += 1
            # more branch pages than the database has, or than the snapshot's pages (the
            # meta's count is no bound on a damaged file: a page reached again and again
            # through a DAG of branch pages made the walk exponential): not a tree
            if visited > branch_pages or visited > last_pg:
                return None
        off = _u16(page + PAGEHDRSZ + 2 * stack_i[top])
        if off < upper or off + 8 > PAGE:
            return None
        node = page + off
        ksize = _u16(node + 6)
        if off + 8 + ksize > PAGE:
            return None
        pgno = _u16(node) | (<uint64_t>_u16(node + 2) << 16) | (<uint64_t>_u16(node + 4) << 32)
        if <unsigned int>top + 2 == depth:  # its children are leaves
            # a branch page's first key is not stored (it is its parent's): no hint there
            if count >= want and stack_i[top] > 0 and ksize > 0:
                hints.append(PyBytes_FromStringAndSize(<const char *>node + 8, ksize))
                count = 0
            count += 1
            stack_i[top] += 1
        else:
            stack_i[top] += 1
            top += 1
            stack_pg[top] = pgno
            stack_i[top] = 0
    return hints


cdef object walk_snap(LmdbRangeScanner s, bytes key):
    """The first key >= ``key`` where a scan's chunk starts by content (a natural boundary
    the exclude patterns keep), or None when the store ends first."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val k, v
    cdef int rc = 0
    cdef uint64_t cs = s.chunk_size
    s._check()
    if s.busy:
        raise RuntimeError(f"{s.path}: scanner is being used by another thread")
    rc = mdb_cursor_open(s.txn, s.dbi, &cur)
    if rc:
        raise _lmdb_error(rc, f"{s.path}: cannot open a cursor")
    s.busy = True
    try:
        k.mv_data = <void *><const unsigned char *>key
        k.mv_size = len(key)
        with nogil:
            rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE if k.mv_size else MDB_FIRST)
            while rc == 0:
                s._note_read(&k, &v)
                if XXH3_64bits(k.mv_data, k.mv_size) % cs == 0 and (
                        s.c.exclude == NULL or not FAPI.matcher_match(
                            s.c.exclude, <const unsigned char *>k.mv_data, k.mv_size)):
                    break
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
        if rc == MDB_NOTFOUND:
            return None
        if rc:
            raise _lmdb_error(rc, f"{s.path}: cursor read failed")
        found = PyBytes_FromStringAndSize(<const char *>k.mv_data, k.mv_size)
        s._trim_if_due()  # the key is copied: nothing points into the map
        return found
    finally:
        s.busy = False
        mdb_cursor_close(cur)
