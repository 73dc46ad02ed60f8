# The planner walk of LmdbRangeScanner (included by lmdbscan.pyx after the class): walks of
# keys and value sizes that never read a value. next_stripe_end advances the scan cursor to
# cut stripes for parallel workers; boundary_after and last_key_before look keys up with a
# cursor of their own; plan_chunks walks the whole snapshot with its own cursor (pcur) and the
# native KeyPlanner, giving exactly the chunks a scan would make (incremental backups). The
# class's methods of the same names are one-line calls to these functions.

cdef object walk_last_key_before(LmdbRangeScanner s, end):
    cdef MDB_cursor *cur = NULL
    cdef MDB_val k, v
    cdef int rc
    cdef bytes bend
    s._check()
    rc = mdb_cursor_open(s.txn, s.dbi, &cur)
    if rc:
        raise _lmdb_error(rc, f"{s.path}: cannot open a cursor")
    try:
        if end is None:
            rc = mdb_cursor_get(cur, &k, &v, MDB_LAST)
        else:
            bend = end
            if not len(bend):
                return None
            k.mv_data = <void *><const unsigned char *>bend
            k.mv_size = len(bend)
            rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
            if rc == MDB_NOTFOUND:
                rc = mdb_cursor_get(cur, &k, &v, MDB_LAST)
            elif rc == 0:
                rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)
        if rc == MDB_NOTFOUND:
            return None
        if rc:
            raise _lmdb_error(rc, f"{s.path}: cursor read failed")
        return PyBytes_FromStringAndSize(<const char *>k.mv_data, k.mv_size)
    finally:
        mdb_cursor_close(cur)


cdef object walk_stripe_end(LmdbRangeScanner s, uint64_t min_records, uint64_t min_bytes):
    cdef MDB_val k, v
    cdef int rc = 0, found = 0
    cdef uint64_t recs = 0, nbytes = 0, cs = s.chunk_size
    cdef MDB_cursor_op op
    cdef const unsigned char *pf
    s._check()
    if s.busy:
        raise RuntimeError(f"{s.path}: scanner is being used by another thread")
    if s.done:
        return None
    s.busy = True
    try:
        with nogil:
            while True:
                op = MDB_NEXT if s.started else MDB_FIRST
                s.started = True
                rc = mdb_cursor_get(s.cur, &k, &v, op)
                if rc:
                    break
                # a natural boundary the exclude patterns keep: the chunker never cuts at
                # an excluded key, so a stripe must not start at one
                if (recs >= min_records or nbytes >= min_bytes) and (
                        XXH3_64bits(k.mv_data, k.mv_size) % cs == 0) and (
                        s.c.exclude == NULL or not FAPI.matcher_match(
                            s.c.exclude, <const unsigned char *>k.mv_data, k.mv_size)):
                    found = 1
                    break
                recs += 1
                nbytes += k.mv_size + v.mv_size
                pf = nodes_ahead(<const unsigned char *>k.mv_data, k.mv_size, v.mv_size)
                if pf != NULL:  # their headers and keys are all the walk reads
                    __builtin_prefetch(pf)
                    __builtin_prefetch(pf + 64)
                # LMDB maps the pages around each node it reads (value headers included),
                # so the planner trims like the scanner
                s._note_read(&k, &v)
    finally:
        s.busy = False
    if rc == MDB_NOTFOUND:
        s.done = True
        return None
    if rc:
        raise _lmdb_error(rc, f"{s.path}: cursor read failed")
    key = PyBytes_FromStringAndSize(<const char *>k.mv_data, k.mv_size)
    s._trim_if_due()  # the key is copied: nothing points into the map
    return key


cdef object walk_boundary_after(LmdbRangeScanner s, bytes key, end, uint64_t max_keys):
    cdef MDB_cursor *cur = NULL
    cdef MDB_val k, v
    cdef int rc = 0, cmp, found = 0
    cdef uint64_t seen = 0, cs = s.chunk_size
    cdef const unsigned char *endp = NULL
    cdef size_t endn = 0, n
    s._check()
    if end is not None:
        endp = <bytes>end
        endn = len(end)
    rc = mdb_cursor_open(s.txn, s.dbi, &cur)
    if rc:
        raise _lmdb_error(rc, f"{s.path}: cannot open a cursor")
    try:
        k.mv_data = <void *><const unsigned char *>key
        k.mv_size = len(key)
        with nogil:
            rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE if k.mv_size else MDB_FIRST)
            while rc == 0 and seen < max_keys:
                if endp != NULL:
                    n = k.mv_size if k.mv_size < endn else endn
                    cmp = memcmp(k.mv_data, endp, n)
                    if cmp > 0 or (cmp == 0 and k.mv_size >= endn):
                        break
                if XXH3_64bits(k.mv_data, k.mv_size) % cs == 0:
                    found = 1
                    break
                seen += 1
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
        if rc and rc != MDB_NOTFOUND:
            raise _lmdb_error(rc, f"{s.path}: cursor read failed")
        if not found:
            return None
        return PyBytes_FromStringAndSize(<const char *>k.mv_data, k.mv_size)
    finally:
        mdb_cursor_close(cur)


cdef plan_drop(LmdbRangeScanner s):
    """Close the planning cursor and free the planner (plan_chunks starts over)."""
    if s.pcur != NULL:
        mdb_cursor_close(s.pcur)
        s.pcur = NULL
    if s.planner_ready:
        PAPI.planner_free(&s.pl)
        s.planner_ready = False
    s.pstarted = False
    s.pdone = False


cdef list walk_plan_chunks(LmdbRangeScanner s, Py_ssize_t max_plans):
    cdef MDB_val k, v
    cdef int rc = 0, r = 0
    cdef ds_plan *out
    cdef Py_ssize_t nout = 0, j
    cdef const unsigned char *pf
    cdef MDB_cursor_op first_op
    s._check()
    if s.busy:
        raise RuntimeError(f"{s.path}: scanner is being used by another thread")
    if max_plans < 1:
        raise ValueError("max_plans must be >= 1")
    if s.pdone:
        return []
    if not s.planner_ready:
        if PAPI.planner_init(&s.pl, s.chunk_size, s.chunk_max_bytes,
                             FAPI.matcher_of(s._exclude)) != FR_OK:
            PAPI.planner_free(&s.pl)
            raise MemoryError("LmdbRangeScanner: cannot allocate the planner")
        s.planner_ready = True
    if s.pcur == NULL:
        rc = mdb_cursor_open(s.txn, s.dbi, &s.pcur)
        if rc:
            raise _lmdb_error(rc, f"{s.path}: cannot open a cursor")
    out = <ds_plan *>malloc((max_plans + 1) * sizeof(ds_plan))
    if out == NULL:
        raise MemoryError("LmdbRangeScanner: cannot allocate plans")
    s.busy = True
    first_op = MDB_FIRST
    if not s.pstarted and len(s.pstart):  # plan_from: from the first key >= pstart
        k.mv_data = <void *><const unsigned char *>s.pstart
        k.mv_size = len(s.pstart)
        first_op = MDB_SET_RANGE
    try:
        with nogil:
            while nout < max_plans:
                rc = mdb_cursor_get(s.pcur, &k, &v, MDB_NEXT if s.pstarted
                                    else first_op)
                s.pstarted = True
                if rc:
                    break
                pf = nodes_ahead(<const unsigned char *>k.mv_data, k.mv_size, v.mv_size)
                if pf != NULL:  # their headers and keys are all the walk reads
                    __builtin_prefetch(pf)
                    __builtin_prefetch(pf + 64)
                r = PAPI.planner_add(&s.pl, <const unsigned char *>k.mv_data, k.mv_size,
                                     v.mv_size, &out[nout])
                if r < 0:
                    break
                nout += r
            if rc == MDB_NOTFOUND:
                rc = 0
                s.pdone = True
                nout += PAPI.planner_finish(&s.pl, &out[nout])
    finally:
        s.busy = False
    try:
        plans = [PAPI.plan_to_py(&out[j]) for j in range(nout)]
    finally:
        for j in range(nout):
            PAPI.plan_free(&out[j])
        free(out)
    if rc:
        raise _lmdb_error(rc, f"{s.path}: cursor read failed")
    if r < 0:
        raise FAPI.chunker_error(NULL, r, PyBytes_FromStringAndSize(
            <const char *>k.mv_data, k.mv_size), -1)
    return plans
