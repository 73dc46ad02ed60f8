# Small inline helpers of the payload format (docs/FORMAT.md §4), shared by framing.pyx,
# payload.pyx and planner.pyx (flatlist.pyx takes key_cmp, the one key order): growable
# buffers, little-endian u64, key order and the key digest (§4.2; the length varints are in
# uvarint.pxd). Inline functions only (compiled into each module that cimports them), so
# this header has no module of its own and costs no call across modules.
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

from framing cimport FR_ENOMEM, FR_OK, KEYHASH_BUF, ds_buf, ds_keyhash
from libxxhash cimport (
    XXH3_64bits_digest,
    XXH3_64bits_reset,
    XXH3_64bits_update,
    XXH3_createState,
    XXH3_freeState,
)


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


cdef inline ds_keyhash *keyhash_new() noexcept nogil:
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


cdef inline void keyhash_free(ds_keyhash *kh) noexcept nogil:
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


cdef inline uint64_t keyhash_digest_reset(ds_keyhash *kh) noexcept nogil:
    cdef uint64_t h
    XXH3_64bits_update(kh.state, kh.buf, kh.len)
    h = XXH3_64bits_digest(kh.state)
    XXH3_64bits_reset(kh.state)
    kh.len = 0
    return h


cdef inline void *grow(void *p, size_t size) noexcept nogil:
    """realloc that frees ``p`` when it fails."""
    cdef void *q = realloc(p, size)
    if q == NULL:
        free(p)
    return q
