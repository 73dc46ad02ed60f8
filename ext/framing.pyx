"""Chunk payloads (docs/FORMAT.md §4): encode, decode, validate, and content-defined chunking.

A payload is ``"DSC1" | flags u32 = 0 | count u64`` then records
``op u8 = 0 | key_len uvarint | value_len uvarint | key | value`` in strictly increasing key
order. A new chunk starts before a record when the current chunk is not empty and either
``XXH3-64(key) % chunk_size == 0`` (natural boundary) or the record would take the payload past
``chunk_max_bytes``. All per-record work runs in C with the GIL released.

The C functions are exported to lmdbscan.pyx through the capsule ``_C_API`` (a
``ds_framing_api*``, see framing.pxd). The rest of the payload format lives in modules of its
own, whose names this module re-exports: payload.pyx (whole-payload encode, decode, validation
and FramingError), keymatch.pyx (KeyMatcher), planner.pyx (KeyPlanner); the small helpers they
share are inline functions in frameutil.pxd. The Python classes over the chunker, Chunk and
Chunker, are chunker.pxi (an include: see docs/ARCHITECTURE.md, "Native modules").
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from compiler cimport __builtin_prefetch
from compress cimport (
    DS_DEFLATE_SEALED,
    DS_ENOMEM,
    DS_OK,
    DS_ZSTD_FRAME,
    DS_ZSTD_STORED,
    ds_chunk_level_ok,
    ds_compress_api,
)
from framing cimport (
    FR_ECOMPRESS,
    FR_EKEYLEN,
    FR_ENOMEM,
    FR_EORDER,
    FR_HEADER,
    FR_MAX_KEY,
    FR_OK,
    POOL,
    ds_buf,
    ds_chunk,
    ds_chunker,
    ds_framing_api,
)
from frameutil cimport (
    buf_reserve,
    key_cmp,
    keyhash_add,
    keyhash_digest_reset,
    keyhash_free,
    keyhash_new,
    put_u64le,
)
from keymatch cimport ds_keymatch_api, ds_matcher
from libxxhash cimport XXH3_64bits
from uvarint cimport put_uvarint, uvarint_len

from dsbackup._ext import compress as _compress_mod
from dsbackup._ext import keymatch as _keymatch_mod
from dsbackup._ext.keymatch import KeyMatcher  # re-exported
from dsbackup._ext.payload import (  # re-exported
    FramingError,
    PayloadInfo,
    decode_keys_sizes,
    decode_records,
    encode_records,
    scan_payload,
)
from dsbackup._ext.planner import KeyPlanner  # re-exported

cdef const ds_compress_api *CAPI = <const ds_compress_api *>PyCapsule_GetPointer(
    _compress_mod._C_API, "dsbackup._ext.compress._C_API")
cdef const ds_keymatch_api *KAPI = <const ds_keymatch_api *>PyCapsule_GetPointer(
    _keymatch_mod._C_API, "dsbackup._ext.keymatch._C_API")


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
    """Frame one record whose key was already checked; 1 when it closed a chunk into *done.

    ``value`` NULL (``vlen`` > 0): the value's bytes are left for the caller to write, at once,
    into the last ``vlen`` bytes of ``c.cur.payload``, and, with a catalog, the value's XXH3-64
    (little-endian) into the last 8 bytes of ``c.cur.catalog`` (lmdbscan reads large values
    with ``pread`` straight into the payload). ``c.records`` tells whether it was framed (an
    excluded record is not)."""
    cdef ds_chunk *ch = &c.cur
    cdef size_t enc, o
    cdef unsigned char *p
    cdef int closed = 0
    if c.exclude != NULL and KAPI.matcher_match(c.exclude, key, klen):
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
    if value != NULL or vlen == 0:
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
        if value != NULL or vlen == 0:
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


include "chunker.pxi"


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
_api.matcher_of = KAPI.matcher_of
_api.matcher_match = KAPI.matcher_match
_C_API = PyCapsule_New(&_api, "dsbackup._ext.framing._C_API", NULL)
