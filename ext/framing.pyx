"""Chunk payloads (docs/FORMAT.md §4): encode, decode, validate, and content-defined chunking.

A payload is ``"DSC1" | flags u32 = 0 | count u64`` then records
``op u8 = 0 | key_len uvarint | value_len uvarint | key | value`` in strictly increasing key
order. A new chunk starts before a record when the current chunk is not empty and either
``XXH3-64(key) % chunk_size == 0`` (natural boundary) or the record would take the payload past
``chunk_max_bytes``. All per-record work runs in C with the GIL released.

The C functions are exported to lmdbscan.pyx through the capsule ``_C_API`` (a
``ds_framing_api*``, see framing.pxd).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from compiler cimport __builtin_prefetch
from compress cimport DS_ENOMEM, DS_OK, ds_compress_api
from framing cimport (
    FR_ECOMPRESS,
    FR_EKEYLEN,
    FR_ENOMEM,
    FR_EORDER,
    FR_HEADER,
    FR_MAX_KEY,
    FR_OK,
    KEYHASH_BUF,
    POOL,
    ds_buf,
    ds_chunk,
    ds_chunker,
    ds_framing_api,
    ds_keyhash,
    ds_matcher,
    ds_pattern,
    ds_plan,
    ds_planner,
)
from libxxhash cimport (
    XXH3_64bits,
    XXH3_64bits_digest,
    XXH3_64bits_reset,
    XXH3_64bits_update,
    XXH3_createState,
    XXH3_freeState,
)

include "keymatch.pxi"
include "payload.pxi"

from dsbackup._ext import compress as _compress_mod
from dsbackup.errors import IntegrityError

cdef const ds_compress_api *CAPI = <const ds_compress_api *>PyCapsule_GetPointer(
    _compress_mod._C_API, "dsbackup._ext.compress._C_API")


class FramingError(IntegrityError, ValueError):
    """A payload or record stream violates docs/FORMAT.md §4 (exit 3: damaged chunk data).

    ``record`` is the record (or input key) index at fault and ``offset`` the payload byte
    offset, when known. The backup side (keys a source gave out of order or of a bad length)
    re-raises it as BackupError naming the source.
    """

    description = "chunk payload violates the record format"

    def __init__(self, message: str, record: int | None = None, offset: int | None = None):
        super().__init__(message)
        self.record = record
        self.offset = offset


# ----------------------------------------------------------------------------- buffers


cdef inline int buf_reserve(ds_buf *b, size_t extra) noexcept nogil:
    cdef size_t need = b.len + extra, cap
    cdef unsigned char *p
    if need <= b.cap:
        return FR_OK
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <unsigned char *>realloc(b.p, cap)
    if p == NULL:
        return FR_ENOMEM
    b.p = p
    b.cap = cap
    return FR_OK


cdef inline size_t uvarint_len(uint64_t v) noexcept nogil:
    cdef size_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline size_t put_uvarint(unsigned char *p, uint64_t v) noexcept nogil:
    cdef size_t i = 0
    while v >= 0x80:
        p[i] = <unsigned char>((v & 0x7f) | 0x80)
        v >>= 7
        i += 1
    p[i] = <unsigned char>v
    return i + 1


cdef inline void put_u64le(unsigned char *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <unsigned char>(v >> (8 * i))


cdef inline int key_cmp(const unsigned char *a, size_t alen, const unsigned char *b,
                        size_t blen) noexcept nogil:
    cdef int c = memcmp(a, b, alen if alen < blen else blen)
    if c:
        return c
    return (alen > blen) - (alen < blen)


# ----------------------------------------------------------------------------- key digest


cdef ds_keyhash *keyhash_new() noexcept nogil:
    cdef ds_keyhash *kh = <ds_keyhash *>malloc(sizeof(ds_keyhash))
    if kh == NULL:
        return NULL
    kh.state = XXH3_createState()
    if kh.state == NULL:
        free(kh)
        return NULL
    XXH3_64bits_reset(kh.state)
    kh.len = 0
    return kh


cdef void keyhash_free(ds_keyhash *kh) noexcept nogil:
    if kh != NULL:
        XXH3_freeState(kh.state)
        free(kh)


cdef inline void keyhash_add(ds_keyhash *kh, const unsigned char *key, size_t klen) noexcept nogil:
    cdef unsigned char lenb[4]
    if kh.len + 4 + klen > KEYHASH_BUF:
        XXH3_64bits_update(kh.state, kh.buf, kh.len)
        kh.len = 0
        if 4 + klen > KEYHASH_BUF:
            lenb[0] = klen & 0xff; lenb[1] = (klen >> 8) & 0xff
            lenb[2] = (klen >> 16) & 0xff; lenb[3] = (klen >> 24) & 0xff
            XXH3_64bits_update(kh.state, lenb, 4)
            XXH3_64bits_update(kh.state, key, klen)
            return
    kh.buf[kh.len] = klen & 0xff
    kh.buf[kh.len + 1] = (klen >> 8) & 0xff
    kh.buf[kh.len + 2] = (klen >> 16) & 0xff
    kh.buf[kh.len + 3] = (klen >> 24) & 0xff
    memcpy(kh.buf + kh.len + 4, key, klen)
    kh.len += 4 + klen


cdef uint64_t keyhash_digest_reset(ds_keyhash *kh) noexcept nogil:
    cdef uint64_t h
    XXH3_64bits_update(kh.state, kh.buf, kh.len)
    h = XXH3_64bits_digest(kh.state)
    XXH3_64bits_reset(kh.state)
    kh.len = 0
    return h


# ----------------------------------------------------------------------------- chunker (C)


cdef int chunker_init(ds_chunker *c, uint64_t chunk_size, uint64_t chunk_max_bytes,
                      const ds_matcher *exclude, int catalog) noexcept nogil:
    memset(c, 0, sizeof(ds_chunker))
    c.chunk_size = chunk_size
    c.chunk_max_bytes = chunk_max_bytes
    c.exclude = exclude
    c.catalog = catalog
    c.size_hint = 65536
    c.keys = keyhash_new()
    return FR_OK if c.keys != NULL else FR_ENOMEM


cdef void chunk_free(ds_chunk *ch) noexcept nogil:
    free(ch.payload.p)
    free(ch.catalog.p)
    CAPI.body_free(&ch.body)
    memset(ch, 0, sizeof(ds_chunk))


cdef void chunk_release(ds_chunker *c, ds_chunk *ch) noexcept nogil:
    """Recycle ``ch``'s payload and body buffers into ``c``'s pool (or free them)."""
    if ch.payload.p != NULL and c.npool_payload < POOL:
        c.pool_payload[c.npool_payload] = ch.payload
        c.npool_payload += 1
        ch.payload.p = NULL
    if ch.body.data != NULL and c.npool_body < POOL:
        c.pool_body[c.npool_body] = ch.body
        c.npool_body += 1
        ch.body.data = NULL
        ch.has_body = 0
    chunk_free(ch)


cdef void chunker_free(ds_chunker *c) noexcept nogil:
    cdef size_t i
    for i in range(c.npool_payload):
        free(c.pool_payload[i].p)
    for i in range(c.npool_body):
        CAPI.body_free(&c.pool_body[i])
    c.npool_payload = 0
    c.npool_body = 0
    chunk_free(&c.cur)
    keyhash_free(c.keys)
    c.keys = NULL
    free(c.prev.p)
    c.prev.p = NULL
    if c.deflater_ready:
        CAPI.deflater_free(&c.deflater)
        c.deflater_ready = 0


cdef int chunk_close(ds_chunker *c, ds_chunk *done) noexcept nogil:
    cdef ds_chunk *ch = &c.cur
    cdef size_t hint
    memcpy(ch.payload.p, b"DSC1\0\0\0\0", 8)
    put_u64le(ch.payload.p + 8, ch.count)
    ch.payload_xxh3 = XXH3_64bits(ch.payload.p, ch.payload.len)
    ch.keys_xxh3 = keyhash_digest_reset(c.keys)
    # next chunk's initial capacity: twice this one, at least 64 KiB, at most what a chunk of
    # chunk_max_bytes needs, so full-size chunks are never reallocated while they are built
    hint = ch.payload.len * 2
    if hint < 65536:
        hint = 65536
    if hint > c.chunk_max_bytes + 1024:
        hint = c.chunk_max_bytes + 1024
    c.size_hint = hint
    done[0] = ch[0]
    memset(ch, 0, sizeof(ds_chunk))
    return FR_OK


cdef int chunker_set_prev(ds_chunker *c, const unsigned char *key, size_t klen) noexcept nogil:
    """Remember ``key`` as the last key seen (ordering across calls)."""
    if klen > c.prev.cap:
        c.prev.len = 0
        if buf_reserve(&c.prev, klen) != FR_OK:
            return FR_ENOMEM
    memcpy(c.prev.p, key, klen)
    c.prev.len = klen
    c.has_prev = 1
    return FR_OK


cdef int chunker_add(ds_chunker *c, const unsigned char *key, size_t klen,
                     const unsigned char *value, size_t vlen, ds_chunk *done) noexcept nogil:
    """Check one record's key (length, order), then frame it (see chunker_append)."""
    if klen == 0 or klen > FR_MAX_KEY:
        return FR_EKEYLEN
    if c.has_prev and key_cmp(c.prev.p, c.prev.len, key, klen) >= 0:
        return FR_EORDER
    if chunker_set_prev(c, key, klen) != FR_OK:
        return FR_ENOMEM
    return chunker_append(c, key, klen, value, vlen, done)


cdef int chunker_append(ds_chunker *c, const unsigned char *key, size_t klen,
                        const unsigned char *value, size_t vlen, ds_chunk *done) noexcept nogil:
    """Frame one record whose key was already checked; 1 when it closed a chunk into *done."""
    cdef ds_chunk *ch = &c.cur
    cdef size_t enc, o
    cdef unsigned char *p
    cdef int closed = 0
    if c.exclude != NULL and matcher_match(c.exclude, key, klen):
        c.excluded_records += 1
        c.excluded_bytes += klen + vlen
        return 0
    enc = 1 + uvarint_len(klen) + uvarint_len(vlen) + klen + vlen
    if ch.count > 0 and (ch.payload.len + enc > c.chunk_max_bytes
                         or XXH3_64bits(key, klen) % c.chunk_size == 0):
        chunk_close(c, done)
        closed = 1
    if ch.payload.p == NULL:
        if c.npool_payload:
            c.npool_payload -= 1
            ch.payload = c.pool_payload[c.npool_payload]
        else:
            ch.payload.p = <unsigned char *>malloc(c.size_hint)
            if ch.payload.p == NULL:
                if closed:
                    chunk_free(done)
                return FR_ENOMEM
            ch.payload.cap = c.size_hint
        ch.payload.len = FR_HEADER
    if buf_reserve(&ch.payload, enc) != FR_OK or (
            c.catalog and buf_reserve(&ch.catalog, klen + 28) != FR_OK):
        if closed:
            chunk_free(done)
        return FR_ENOMEM
    p = ch.payload.p
    o = ch.payload.len
    p[o] = 0
    o += 1
    o += put_uvarint(p + o, klen)
    o += put_uvarint(p + o, vlen)
    if ch.count == 0:
        ch.first_off = o
        ch.first_len = klen
    ch.last_off = o
    ch.last_len = klen
    memcpy(p + o, key, klen)
    o += klen
    memcpy(p + o, value, vlen)
    ch.payload.len = o + vlen
    keyhash_add(c.keys, key, klen)
    if c.catalog:
        ch.has_catalog = 1
        p = ch.catalog.p
        o = ch.catalog.len
        o += put_uvarint(p + o, klen)
        memcpy(p + o, key, klen)
        o += klen
        o += put_uvarint(p + o, vlen)
        put_u64le(p + o, XXH3_64bits(value, vlen))
        ch.catalog.len = o + 8
    ch.count += 1
    ch.raw_bytes += klen + vlen
    c.records += 1
    c.raw_bytes += klen + vlen
    return closed


cdef int chunker_finish(ds_chunker *c, ds_chunk *done) noexcept nogil:
    if c.cur.count == 0:
        return 0
    chunk_close(c, done)
    return 1


cdef int chunk_compress(ds_chunker *c, ds_chunk *ch, int level) noexcept nogil:
    cdef int r
    if not c.deflater_ready:
        if CAPI.deflater_init(&c.deflater) != DS_OK:
            CAPI.deflater_free(&c.deflater)
            return FR_ENOMEM
        c.deflater_ready = 1
    if ch.body.data == NULL and c.npool_body:
        c.npool_body -= 1
        ch.body = c.pool_body[c.npool_body]
    r = CAPI.deflate_body(&c.deflater, ch.payload.p, ch.payload.len, level, 512, &ch.body)
    if r == DS_ENOMEM:
        return FR_ENOMEM
    if r != DS_OK:
        c.err_detail = r
        return FR_ECOMPRESS
    ch.has_body = 1
    return FR_OK


cdef object chunk_to_py(ds_chunk *ch, object body):
    """A :class:`Chunk` for ``ch``; it takes ``ch``'s payload buffer (bytes made on demand).
    ``body``, when given, is the chunk's body (one the caller made), else ``ch``'s is copied."""
    cdef Chunk out = Chunk.__new__(Chunk)
    cdef const char *p = <const char *>ch.payload.p
    out.first_key = PyBytes_FromStringAndSize(p + ch.first_off, ch.first_len)
    out.last_key = PyBytes_FromStringAndSize(p + ch.last_off, ch.last_len)
    out.record_count = ch.count
    out.raw_bytes = ch.raw_bytes
    out.keys_xxh3 = ch.keys_xxh3
    out.payload_xxh3 = ch.payload_xxh3
    out.payload_len = ch.payload.len
    if ch.has_catalog:
        out.catalog = PyBytes_FromStringAndSize(<const char *>ch.catalog.p, ch.catalog.len)
    if body is not None:
        out.body = body
    elif ch.has_body:
        out.body = CAPI.body_to_py(&ch.body)
    out._buf = ch.payload.p
    ch.payload.p = NULL
    ch.payload.cap = 0
    return out


cdef object chunker_error(ds_chunker *c, int code, object key, Py_ssize_t index):
    """The exception for chunker error ``code`` on input record ``index`` (-1: unknown)."""
    where = f"record {index}: key {key!r}" if index >= 0 else f"key {key!r}"
    rec = index if index >= 0 else None
    if code == FR_ENOMEM:
        return MemoryError("chunker: out of memory while framing a chunk")
    if code == FR_EKEYLEN:
        return FramingError(f"{where} has length {len(key)}; keys must be 1..65535 bytes", rec)
    if code == FR_EORDER:
        prev = bytes(c.prev.p[:c.prev.len]) if c.has_prev else None
        return FramingError(f"{where} is not greater than the previous key {prev!r}; keys "
                            f"must be strictly increasing within and across batches", rec)
    if code == FR_ECOMPRESS:
        return _compress_mod.CompressionError(
            f"chunker: compression failed: {CAPI.error_text(&c.deflater, c.err_detail)}")
    return RuntimeError(f"chunker: error {code}")


cdef const ds_matcher *matcher_of(object m) except? NULL:
    if m is None:
        return NULL
    if not isinstance(m, KeyMatcher):
        raise TypeError(f"exclude must be a KeyMatcher or None, not {type(m).__name__}")
    return &(<KeyMatcher>m).m


include "chunker.pxi"


include "planner.pxi"


cdef ds_framing_api _api
_api.chunker_init = chunker_init
_api.chunker_free = chunker_free
_api.chunker_add = chunker_add
_api.chunker_append = chunker_append
_api.chunker_set_prev = chunker_set_prev
_api.chunker_finish = chunker_finish
_api.chunk_compress = chunk_compress
_api.chunk_free = chunk_free
_api.chunk_release = chunk_release
_api.chunk_to_py = chunk_to_py
_api.chunker_error = chunker_error
_api.matcher_of = matcher_of
_api.matcher_match = matcher_match
_api.planner_init = planner_init
_api.planner_free = planner_free
_api.planner_add = planner_add
_api.planner_finish = planner_finish
_api.plan_free = plan_free
_api.plan_to_py = plan_to_py
_C_API = PyCapsule_New(&_api, "dsbackup._ext.framing._C_API", NULL)
