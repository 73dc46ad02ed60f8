"""Chunk planning from keys and value sizes only (KeyPlanner; the C planner for lmdbscan.pyx).

The planner applies exactly the chunker's rules (docs/FORMAT.md §4.1: natural boundaries,
chunk_max_bytes cuts, exclusions) and the key digest (§4.2) to (key, value length) pairs, so it
yields the chunks a full scan would make — first and last key, record count, payload length,
key digest — without reading a value. Incremental backups compare these plans with the
parent's index to find unchanged chunks.

The C functions are exported to lmdbscan.pyx through the capsule ``_C_API`` (a
``ds_planner_api*``, see planner.pxd); framing.pyx re-exports KeyPlanner.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from framing cimport FR_EKEYLEN, FR_ENOMEM, FR_EORDER, FR_HEADER, FR_MAX_KEY, FR_OK, ds_buf
from frameutil cimport (
    buf_reserve,
    grow,
    key_cmp,
    keyhash_add,
    keyhash_digest_reset,
    keyhash_free,
    keyhash_new,
)
from uvarint cimport uvarint_len
from keymatch cimport ds_keymatch_api, ds_matcher
from libxxhash cimport XXH3_64bits
from planner cimport ds_plan, ds_planner, ds_planner_api

from dsbackup._ext import keymatch as _keymatch_mod
from dsbackup._ext.payload import FramingError

cdef const ds_keymatch_api *KAPI = <const ds_keymatch_api *>PyCapsule_GetPointer(
    _keymatch_mod._C_API, "dsbackup._ext.keymatch._C_API")


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
    if p.exclude != NULL and KAPI.matcher_match(p.exclude, key, klen):
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


cdef object _planner_error(int code, object key, Py_ssize_t i):
    """The exception for planner error ``code`` on input record ``i`` (the chunker's words)."""
    if code == FR_ENOMEM:
        return MemoryError("chunker: out of memory while framing a chunk")
    if code == FR_EKEYLEN:
        return FramingError(f"record {i}: key {key!r} has length {len(key)}; keys must be "
                            "1..65535 bytes", i)
    if code == FR_EORDER:
        return FramingError(f"record {i}: key {key!r} is not greater than the previous key; "
                            "keys must be strictly increasing", i)
    return RuntimeError(f"planner: error {code}")


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
        if planner_init(&self.p, chunk_size, chunk_max_bytes, KAPI.matcher_of(exclude)) != FR_OK:
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
                            out = <ds_plan *>grow(out, capout * sizeof(ds_plan))
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
                raise _planner_error(r, kt[i] if i < n else None, i)
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


# ----------------------------------------------------------------------------- C API


cdef ds_planner_api _api
_api.planner_init = planner_init
_api.planner_free = planner_free
_api.planner_add = planner_add
_api.planner_finish = planner_finish
_api.plan_free = plan_free
_api.plan_to_py = plan_to_py
_C_API = PyCapsule_New(&_api, "dsbackup._ext.planner._C_API", NULL)
