# C-level types of framing.pyx, shared with lmdbscan.pyx. Types only: the functions are reached
# through the capsule ``dsbackup._ext.framing._C_API`` (a ds_framing_api*), so no module is
# imported by its bare name at run time.
from libc.stdint cimport uint64_t

from compress cimport ds_body, ds_compress_api, ds_deflater
from keymatch cimport ds_matcher
from libxxhash cimport XXH3_state_t


cdef enum:
    FR_OK = 0
    FR_ENOMEM = -1
    FR_EKEYLEN = -10          # key length 0 or > 65535
    FR_EORDER = -11           # key not strictly greater than the previous one
    FR_ECOMPRESS = -12        # the compression engine failed (see err_detail)
    FR_MAX_KEY = 65535
    FR_HEADER = 16
    KEYHASH_BUF = 16384
    POOL = 2                  # finished-chunk buffers kept per chunker for reuse


ctypedef struct ds_buf:
    unsigned char *p
    size_t len
    size_t cap


ctypedef struct ds_keyhash:
    # XXH3-64 over ``key_len u32 LE || key`` for each key (§4.2), fed in batches
    XXH3_state_t *state
    size_t len
    unsigned char buf[KEYHASH_BUF]


ctypedef struct ds_chunk:
    ds_buf payload            # 16-byte header + records
    uint64_t count
    uint64_t raw_bytes
    uint64_t keys_xxh3
    uint64_t payload_xxh3
    size_t first_off
    size_t first_len
    size_t last_off
    size_t last_len
    ds_buf catalog
    int has_catalog
    ds_body body
    int has_body


ctypedef struct ds_chunker:
    uint64_t chunk_size
    uint64_t chunk_max_bytes
    const ds_matcher *exclude
    int catalog
    ds_chunk cur
    ds_keyhash *keys
    ds_buf prev               # previous key seen (ordering across calls)
    int has_prev
    size_t size_hint          # initial payload capacity of a new chunk
    uint64_t records
    uint64_t raw_bytes
    uint64_t excluded_records
    uint64_t excluded_bytes
    ds_deflater deflater
    int deflater_ready
    ds_buf pool_payload[POOL] # recycled payload buffers (no page faults on reuse)
    size_t npool_payload
    ds_body pool_body[POOL]   # recycled body buffers
    size_t npool_body
    int err_detail            # compress error code behind FR_ECOMPRESS


ctypedef struct ds_framing_api:
    int (*chunker_init)(ds_chunker *c, uint64_t chunk_size, uint64_t chunk_max_bytes,
                        const ds_matcher *exclude, int catalog) noexcept nogil
    void (*chunker_free)(ds_chunker *c) noexcept nogil
    # 1: a chunk was completed into *done (before this record), 0: not, <0: FR_* error
    int (*chunker_add)(ds_chunker *c, const unsigned char *key, size_t klen,
                       const unsigned char *value, size_t vlen, ds_chunk *done) noexcept nogil
    # chunker_add without the key checks, for keys the caller has checked (length 1..65535,
    # strictly increasing); the caller then records the last key with chunker_set_prev
    int (*chunker_append)(ds_chunker *c, const unsigned char *key, size_t klen,
                          const unsigned char *value, size_t vlen, ds_chunk *done) noexcept nogil
    int (*chunker_set_prev)(ds_chunker *c, const unsigned char *key, size_t klen) noexcept nogil
    # 1: the last chunk was completed into *done, 0: nothing pending
    int (*chunker_finish)(ds_chunker *c, ds_chunk *done) noexcept nogil
    int (*chunk_compress)(ds_chunker *c, ds_chunk *chunk, int level) noexcept nogil
    void (*chunk_free)(ds_chunk *chunk) noexcept nogil
    # give a finished chunk's buffers back to the chunker (recycled or freed)
    void (*chunk_release)(ds_chunker *c, ds_chunk *chunk) noexcept nogil
    # a Chunk; takes the payload buffer, then release. body: the Chunk's body when not None
    object (*chunk_to_py)(ds_chunk *chunk, object body)
    object (*chunker_error)(ds_chunker *c, int code, object key, Py_ssize_t index)  # exception
    # keymatch.pyx's matcher, passed on
    const ds_matcher *(*matcher_of)(object matcher) except? NULL   # NULL for None
    int (*matcher_match)(const ds_matcher *m, const unsigned char *key, size_t klen) noexcept nogil
