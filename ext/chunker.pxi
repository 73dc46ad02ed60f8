# Python classes Chunk and Chunker over the C chunker (included by framing.pyx).

cdef class Chunk:
    """One framed chunk: payload, digests, keys, optional catalog and compressed body.

    ``payload`` is made into ``bytes`` on first access (a compressing caller that only writes
    ``body.data`` never pays for that copy); ``payload_len`` is its length.
    """

    cdef unsigned char *_buf
    cdef bytes _payload
    cdef readonly size_t payload_len
    cdef readonly uint64_t record_count
    cdef readonly bytes first_key
    cdef readonly bytes last_key
    cdef readonly uint64_t keys_xxh3
    cdef readonly uint64_t payload_xxh3
    cdef readonly uint64_t raw_bytes
    cdef readonly object catalog
    cdef readonly object body

    def __dealloc__(self):
        free(self._buf)

    def __reduce__(self):
        return (_chunk_from_state, (self.payload, self.record_count, self.first_key,
                                    self.last_key, self.keys_xxh3, self.payload_xxh3,
                                    self.raw_bytes, self.catalog, self.body))

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            self._payload = PyBytes_FromStringAndSize(<const char *>self._buf, self.payload_len)
            free(self._buf)
            self._buf = NULL
        return self._payload

    def __repr__(self) -> str:
        return (f"Chunk(records={self.record_count}, payload={self.payload_len} B, "
                f"first_key={self.first_key!r}, last_key={self.last_key!r}, "
                f"compressed={None if self.body is None else len(self.body.data)})")


def _chunk_from_state(bytes payload, uint64_t record_count, bytes first_key, bytes last_key,
                      uint64_t keys_xxh3, uint64_t payload_xxh3, uint64_t raw_bytes, catalog,
                      body):
    """Rebuild a pickled :class:`Chunk`."""
    cdef Chunk c = Chunk.__new__(Chunk)
    c._payload = payload
    c.payload_len = len(payload)
    c.record_count = record_count
    c.first_key = first_key
    c.last_key = last_key
    c.keys_xxh3 = keys_xxh3
    c.payload_xxh3 = payload_xxh3
    c.raw_bytes = raw_bytes
    c.catalog = catalog
    c.body = body
    return c


cdef class Chunker:
    """Cut a sorted record stream into chunks (docs/FORMAT.md §4.1).

    Not safe for concurrent use of one object; separate Chunkers may run in parallel.
    """

    cdef ds_chunker c
    cdef object _exclude
    cdef bint _busy

    def __cinit__(self, uint64_t chunk_size, uint64_t chunk_max_bytes, exclude=None,
                  bint catalog=False):
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if chunk_max_bytes < 1:
            raise ValueError("chunk_max_bytes must be >= 1")
        if chunker_init(&self.c, chunk_size, chunk_max_bytes, KAPI.matcher_of(exclude),
                        catalog) != FR_OK:
            raise MemoryError("Chunker: cannot allocate the key digest state")
        self._exclude = exclude

    def __dealloc__(self):
        chunker_free(&self.c)

    def __reduce__(self):
        raise TypeError("a Chunker holds native state and cannot be pickled")

    @property
    def records(self) -> int:
        return self.c.records

    @property
    def raw_bytes(self) -> int:
        return self.c.raw_bytes

    @property
    def excluded_records(self) -> int:
        return self.c.excluded_records

    @property
    def excluded_bytes(self) -> int:
        return self.c.excluded_bytes

    def add(self, keys, values) -> list:
        """Frame records; return the chunks completed by them (the last stays open)."""
        return self._run(keys, values, -1)

    def add_compress(self, keys, values, int level) -> list:
        """Like :meth:`add`, and compress each completed chunk (``Chunk.body``)."""
        _check_level(level)
        return self._run(keys, values, level)

    def finish(self):
        """Close and return the open chunk, or None when it is empty."""
        return self._finish(-1)

    def finish_compress(self, int level):
        """Like :meth:`finish`, and compress the chunk."""
        _check_level(level)
        return self._finish(level)

    cdef object _finish(self, int level):
        cdef ds_chunk done
        cdef int r = 0
        self._enter()
        try:
            with nogil:
                r = chunker_finish(&self.c, &done)
                if r == 1 and level >= 0:
                    r = chunk_compress(&self.c, &done, level)
                    if r < 0:
                        chunk_free(&done)
                    else:
                        r = 1
        finally:
            self._busy = False
        if r < 0:
            raise chunker_error(&self.c, r, None, -1)
        if r != 1:
            return None
        try:
            return chunk_to_py(&done, None)
        finally:
            chunk_release(&self.c, &done)

    cdef _enter(self):
        if self._busy:
            raise RuntimeError("Chunker is being used by another thread")
        self._busy = True

    cdef list _run(self, keys, values, int level):
        cdef tuple kt = tuple(keys), vt = tuple(values)
        cdef Py_ssize_t n = len(kt), i, bad = -1
        cdef const unsigned char **kp
        cdef const unsigned char **vp
        cdef size_t *kl
        cdef size_t *vl
        cdef ds_chunk *out = NULL
        cdef size_t nout = 0, capout = 0
        cdef int r = 0
        cdef object k, v
        if len(vt) != n:
            raise ValueError(f"{n} keys but {len(vt)} values")
        kp = <const unsigned char **>malloc((n + 1) * sizeof(void *) * 2)
        kl = <size_t *>malloc((n + 1) * sizeof(size_t) * 2)
        if kp == NULL or kl == NULL:
            free(kp)
            free(kl)
            raise MemoryError(f"Chunker: cannot allocate the index of {n} records")
        vp = kp + n + 1
        vl = kl + n + 1
        try:
            for i in range(n):
                k = <object>PyTuple_GET_ITEM(kt, i)
                v = <object>PyTuple_GET_ITEM(vt, i)
                if not PyBytes_Check(k) or not PyBytes_Check(v):
                    raise TypeError(f"record {i}: keys and values must be bytes, got "
                                    f"{type(k).__name__} and {type(v).__name__}")
                kp[i] = <const unsigned char *>PyBytes_AS_STRING(k)
                kl[i] = PyBytes_GET_SIZE(k)
                vp[i] = <const unsigned char *>PyBytes_AS_STRING(v)
                vl[i] = PyBytes_GET_SIZE(v)
            self._enter()
            try:
                with nogil:
                    r = _validate_batch(&self.c, kp, kl, n, &bad)
                    i = 0
                    while r == FR_OK and i < n:
                        if nout == capout:
                            capout = capout * 2 + 4
                            out = <ds_chunk *>_grow(out, capout * sizeof(ds_chunk))
                            if out == NULL:
                                r = FR_ENOMEM
                                break
                        if i + PREFETCH < n:
                            # the records are scattered Python objects: fetch ahead
                            _prefetch_record(kp[i + PREFETCH], kl[i + PREFETCH],
                                             vp[i + PREFETCH], vl[i + PREFETCH])
                        r = chunker_append(&self.c, kp[i], kl[i], vp[i], vl[i], &out[nout])
                        if r == 1:
                            r = FR_OK
                            if level >= 0:
                                r = chunk_compress(&self.c, &out[nout], level)
                                if r < 0:
                                    chunk_free(&out[nout])
                                    break
                            nout += 1
                        elif r < 0:
                            bad = i
                        i += 1
                    if i > 0 and chunker_set_prev(&self.c, kp[i - 1], kl[i - 1]) != FR_OK:
                        r = FR_ENOMEM
            finally:
                self._busy = False
            chunks = []
            i = 0
            try:
                while i < <Py_ssize_t>nout:
                    chunks.append(chunk_to_py(&out[i], None))
                    chunk_release(&self.c, &out[i])
                    i += 1
            finally:
                while i < <Py_ssize_t>nout:
                    chunk_free(&out[i])
                    i += 1
            if r < 0:
                if r == FR_EORDER and bad > 0:
                    raise FramingError(f"record {bad}: key {kt[bad]!r} is not greater than the "
                                       f"previous key {kt[bad - 1]!r}; keys must be strictly "
                                       f"increasing", bad)
                raise chunker_error(&self.c, r, kt[bad] if bad >= 0 else None, bad)
            return chunks
        finally:
            free(out)
            free(kp)
            free(kl)


cdef enum:
    PREFETCH = 8          # records fetched ahead in Chunker._run


cdef inline void _prefetch_record(const unsigned char *k, size_t kl, const unsigned char *v,
                                  size_t vl) noexcept nogil:
    cdef size_t o
    __builtin_prefetch(k)
    if kl > 48:
        __builtin_prefetch(k + kl - 1)
    if vl > 1024:
        vl = 1024         # long values stream well enough once started
    o = 0
    while o < vl:
        __builtin_prefetch(v + o)
        o += 64
    if vl:
        __builtin_prefetch(v + vl - 1)


cdef void *_grow(void *p, size_t size) noexcept nogil:
    cdef void *q = realloc(p, size)
    if q == NULL:
        free(p)
    return q


cdef int _validate_batch(ds_chunker *c, const unsigned char **kp, size_t *kl, Py_ssize_t n,
                         Py_ssize_t *bad) noexcept nogil:
    """Check key lengths and order of a whole batch before any state changes."""
    cdef Py_ssize_t i
    for i in range(n):
        if kl[i] == 0 or kl[i] > FR_MAX_KEY:
            bad[0] = i
            return FR_EKEYLEN
        if i == 0:
            if c.has_prev and key_cmp(c.prev.p, c.prev.len, kp[0], kl[0]) >= 0:
                bad[0] = 0
                return FR_EORDER
        elif key_cmp(kp[i - 1], kl[i - 1], kp[i], kl[i]) >= 0:
            bad[0] = i
            return FR_EORDER
    return FR_OK


cdef _check_level(int level):
    # a deflate level, a zstd chunk level (DS_ZSTD_STORED/DS_ZSTD_FRAME + 1..19) or a sealed
    # deflate one (DS_DEFLATE_SEALED + 0..9)
    if not ds_chunk_level_ok(level):
        raise ValueError(f"compression level must be 0..9 (deflate) or a chunk level "
                         f"(dsbackup.codec: {DS_ZSTD_STORED}+1..19, {DS_ZSTD_FRAME}+1..19, "
                         f"{DS_DEFLATE_SEALED}+0..9), got {level}")


def is_boundary(const unsigned char[::1] key, uint64_t chunk_size) -> bool:
    """True when a chunk starts before ``key`` by content: ``XXH3-64(key) % chunk_size == 0``."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    cdef size_t n = key.shape[0]
    return XXH3_64bits(&key[0] if n else NULL, n) % chunk_size == 0
