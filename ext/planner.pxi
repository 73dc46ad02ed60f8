# Chunk planning from keys and value sizes only (included by framing.pyx).
#
# The planner applies exactly the chunker's rules (docs/FORMAT.md §4.1: natural boundaries,
# chunk_max_bytes cuts, exclusions) and the key digest (§4.2) to (key, value length) pairs, so it
# yields the chunks a full scan would make — first and last key, record count, payload length,
# key digest — without reading a value. Incremental backups compare these plans with the
# parent's index to find unchanged chunks.


cdef int planner_init(ds_planner *p, uint64_t chunk_size, uint64_t chunk_max_bytes,
                      const ds_matcher *exclude) noexcept nogil:
    memset(p, 0, sizeof(ds_planner))
    p.chunk_size = chunk_size
    p.chunk_max_bytes = chunk_max_bytes
    p.exclude = exclude
    p.keys = keyhash_new()
    return FR_OK if p.keys != NULL else FR_ENOMEM


cdef void plan_free(ds_plan *d) noexcept nogil:
    free(d.first.p)
    free(d.last.p)
    memset(d, 0, sizeof(ds_plan))


cdef void planner_free(ds_planner *p) noexcept nogil:
    plan_free(&p.cur)
    free(p.prev.p)
    p.prev.p = NULL
    keyhash_free(p.keys)
    p.keys = NULL


cdef inline int buf_set(ds_buf *b, const unsigned char *key, size_t klen) noexcept nogil:
    b.len = 0
    if buf_reserve(b, klen) != FR_OK:
        return FR_ENOMEM
    memcpy(b.p, key, klen)
    b.len = klen
    return FR_OK


cdef inline void planner_close(ds_planner *p, ds_plan *done) noexcept nogil:
    p.cur.keys_xxh3 = keyhash_digest_reset(p.keys)
    done[0] = p.cur
    memset(&p.cur, 0, sizeof(ds_plan))


cdef int planner_add(ds_planner *p, const unsigned char *key, size_t klen, uint64_t vlen,
                     ds_plan *done) noexcept nogil:
    """Account one record; 1 when it closed a plan into *done (before this record)."""
    cdef uint64_t enc
    cdef int closed = 0
    if klen == 0 or klen > FR_MAX_KEY:
        return FR_EKEYLEN
    if p.has_prev and key_cmp(p.prev.p, p.prev.len, key, klen) >= 0:
        return FR_EORDER
    if buf_set(&p.prev, key, klen) != FR_OK:
        return FR_ENOMEM
    p.has_prev = 1
    if p.exclude != NULL and matcher_match(p.exclude, key, klen):
        p.excluded_records += 1
        p.excluded_bytes += klen + vlen
        return 0
    enc = 1 + uvarint_len(klen) + uvarint_len(vlen) + klen + vlen
    if p.cur.count > 0 and (p.cur.payload_len + enc > p.chunk_max_bytes
                            or XXH3_64bits(key, klen) % p.chunk_size == 0):
        planner_close(p, done)
        closed = 1
    if p.cur.count == 0:
        p.cur.payload_len = FR_HEADER
        if buf_set(&p.cur.first, key, klen) != FR_OK:
            return FR_ENOMEM
    if buf_set(&p.cur.last, key, klen) != FR_OK:
        return FR_ENOMEM
    keyhash_add(p.keys, key, klen)
    p.cur.count += 1
    p.cur.payload_len += enc
    p.cur.raw_bytes += klen + vlen
    p.records += 1
    p.raw_bytes += klen + vlen
    return closed


cdef int planner_finish(ds_planner *p, ds_plan *done) noexcept nogil:
    if p.cur.count == 0:
        return 0
    planner_close(p, done)
    return 1


cdef object plan_to_py(ds_plan *d):
    """(first_key, last_key, record_count, payload_len, keys_xxh3, raw_bytes)."""
    return (PyBytes_FromStringAndSize(<const char *>d.first.p, d.first.len),
            PyBytes_FromStringAndSize(<const char *>d.last.p, d.last.len),
            d.count, d.payload_len, d.keys_xxh3, d.raw_bytes)


cdef class KeyPlanner:
    """The chunks of a sorted (key, value size) stream, as the Chunker would cut them.

    ``add(keys, sizes)`` returns the plans completed by a batch, ``finish()`` the last one; a
    plan is ``(first_key, last_key, record_count, payload_len, keys_xxh3, raw_bytes)``.
    """

    cdef ds_planner p
    cdef object _exclude
    cdef bint _busy

    def __cinit__(self, uint64_t chunk_size, uint64_t chunk_max_bytes, exclude=None):
        if chunk_size < 1 or chunk_max_bytes < 1:
            raise ValueError("chunk_size and chunk_max_bytes must be >= 1")
        if planner_init(&self.p, chunk_size, chunk_max_bytes, matcher_of(exclude)) != FR_OK:
            raise MemoryError("KeyPlanner: cannot allocate the key digest state")
        self._exclude = exclude

    def __dealloc__(self):
        planner_free(&self.p)

    @property
    def records(self) -> int:
        return self.p.records

    @property
    def raw_bytes(self) -> int:
        return self.p.raw_bytes

    @property
    def excluded_records(self) -> int:
        return self.p.excluded_records

    @property
    def excluded_bytes(self) -> int:
        return self.p.excluded_bytes

    def add(self, keys, sizes) -> list:
        cdef tuple kt = tuple(keys), st = tuple(sizes)
        cdef Py_ssize_t n = len(kt), i = 0, nout = 0, capout = 0, j
        cdef const unsigned char **kp
        cdef size_t *kl
        cdef uint64_t *vl
        cdef ds_plan *out = NULL
        cdef int r = 0
        cdef object k
        if len(st) != n:
            raise ValueError(f"{n} keys but {len(st)} sizes")
        if self._busy:
            raise RuntimeError("KeyPlanner is being used by another thread")
        kp = <const unsigned char **>malloc((n + 1) * sizeof(void *))
        kl = <size_t *>malloc((n + 1) * sizeof(size_t))
        vl = <uint64_t *>malloc((n + 1) * sizeof(uint64_t))
        if kp == NULL or kl == NULL or vl == NULL:
            free(kp)
            free(kl)
            free(vl)
            raise MemoryError(f"KeyPlanner: cannot allocate the index of {n} records")
        try:
            for i in range(n):
                k = <object>PyTuple_GET_ITEM(kt, i)
                if not PyBytes_Check(k):
                    raise TypeError(f"record {i}: keys must be bytes, got {type(k).__name__}")
                kp[i] = <const unsigned char *>PyBytes_AS_STRING(k)
                kl[i] = PyBytes_GET_SIZE(k)
                vl[i] = <uint64_t>st[i]
            self._busy = True
            try:
                with nogil:
                    i = 0
                    while i < n:
                        if nout == capout:
                            capout = capout * 2 + 4
                            out = <ds_plan *>_grow(out, capout * sizeof(ds_plan))
                            if out == NULL:
                                r = FR_ENOMEM
                                break
                        r = planner_add(&self.p, kp[i], kl[i], vl[i], &out[nout])
                        if r < 0:
                            break
                        nout += r
                        i += 1
            finally:
                self._busy = False
            plans = [plan_to_py(&out[j]) for j in range(nout)]
            if r < 0:
                raise chunker_error(NULL, r, kt[i] if i < n else None, i) if r != FR_EORDER \
                    else FramingError(f"record {i}: key {kt[i]!r} is not greater than the "
                                      f"previous key; keys must be strictly increasing", i)
            return plans
        finally:
            if out != NULL:
                for j in range(nout):
                    plan_free(&out[j])
            free(out)
            free(kp)
            free(kl)
            free(vl)

    def finish(self):
        """The last, open plan (None when empty)."""
        cdef ds_plan d
        if planner_finish(&self.p, &d) != 1:
            return None
        try:
            return plan_to_py(&d)
        finally:
            plan_free(&d)
