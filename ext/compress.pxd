# C-level types shared by compress.pyx and the modules that compress chunks in native code
# (framing.pyx, lmdbscan.pyx). Types (and one inline check) only: the functions are reached
# through the capsule ``dsbackup._ext.compress._C_API`` (a ds_compress_api*), so no module is
# imported by its bare name at run time.
from libc.stdint cimport uint32_t, uint64_t

from libisal cimport isal_zstream
from libz cimport z_stream


cdef enum:
    DS_OK = 0
    DS_ENOMEM = -1
    DS_ELEVEL = -2
    DS_EENGINE = -3
    DS_ETOOBIG = -4
    # chunk codec in the level argument of deflate_body (docs/FORMAT.md §11.6): a level of
    # DS_ZSTD_STORED + L is zstd level L, the frame in stored deflate blocks (an unencrypted
    # archive's chunk body); DS_ZSTD_FRAME + L the bare frame (the plaintext sealed in an
    # encrypted archive). 0..9 stay deflate levels.
    DS_ZSTD_STORED = 100
    DS_ZSTD_FRAME = 200
    DS_ZSTD_MAX_LEVEL = 19
    # DS_DEFLATE_SEALED + L: deflate level L without the CRC-32 (ds_body.crc = 0): the
    # plaintext sealed in an encrypted archive, whose member CRC covers the ciphertext
    # (docs/FORMAT.md §11.4); never the body of an unencrypted archive's member
    DS_DEFLATE_SEALED = 300
    # ds_body.codec
    DS_CODEC_DEFLATE = 0
    DS_CODEC_ZSTD_STORED = 1
    DS_CODEC_ZSTD_FRAME = 2
    DS_CODEC_DEFLATE_SEALED = 3  # deflate without its CRC-32 (DS_DEFLATE_SEALED)
    # the library call behind a DS_EENGINE (ds_deflater.lib)
    DS_LIB_ISAL_DEFLATE = 1
    DS_LIB_Z_RESET = 2
    DS_LIB_Z_INIT = 3
    DS_LIB_Z_DEFLATE = 4
    DS_LIB_ZSTD = 5



cdef inline bint ds_chunk_level_ok(int level) noexcept nogil:
    """A deflate level (0..9) or a chunk level of dsbackup.codec: DS_ZSTD_STORED or
    DS_ZSTD_FRAME + 1..19, DS_DEFLATE_SEALED + 0..9 (the one check of every native entry)."""
    return (0 <= level <= 9 or DS_ZSTD_STORED < level <= DS_ZSTD_STORED + DS_ZSTD_MAX_LEVEL
            or DS_ZSTD_FRAME < level <= DS_ZSTD_FRAME + DS_ZSTD_MAX_LEVEL
            or DS_DEFLATE_SEALED <= level <= DS_DEFLATE_SEALED + 9)

ctypedef struct ds_body:
    unsigned char *data      # raw deflate blocks (malloc'd), the last with BFINAL = 1
    size_t len
    size_t cap               # allocated bytes at data (reused by the next deflate_body)
    uint32_t crc             # CRC-32 of input || padding (0 for DS_CODEC_DEFLATE_SEALED)
    uint64_t size            # input length + zero padding
    uint64_t input_len       # bytes of the tar entry data (a zstd body: the frame's length)
    uint64_t content_len     # the chunk payload's length (= input_len for deflate)
    uint64_t xxh3            # zstd: XXH3-64 of the frame; deflate: 0
    int codec                # DS_CODEC_*


ctypedef struct ds_deflater:
    # Reusable engine state (one per thread or per owning object; never shared).
    isal_zstream *isal
    unsigned char *level_buf
    size_t level_buf_size
    z_stream *zs
    int z_level              # level zs was initialised for, -1 when none
    unsigned char *zeros     # ZERO_PIECE zero bytes for the padding
    ds_body scratch          # output buffer reused by deflate_body() calls from Python
    int lib                  # the library call behind the last DS_EENGINE (DS_LIB_*), 0 none
    int lib_ret              # its return code (ISA-L or zlib), kept for the message
    void *zcctx              # ZSTD_CCtx, created on first use, reused
    int zlevel               # level zcctx is set to, 0 none
    unsigned char *zbuf      # frame buffer of a stored-block zstd body (reused)
    size_t zbuf_cap
    size_t zstd_err          # libzstd's code behind the last DS_LIB_ZSTD error


ctypedef struct ds_compress_api:
    # out.data may hold a buffer from an earlier call (reused when large enough, else
    # reallocated); on error out.data is still owned by out (free it with body_free)
    int (*deflate_body)(ds_deflater *ws, const unsigned char *data, size_t n, int level,
                        size_t pad_to, ds_body *out) noexcept nogil
    int (*deflater_init)(ds_deflater *ws) noexcept nogil
    void (*deflater_free)(ds_deflater *ws) noexcept nogil
    void (*body_free)(ds_body *body) noexcept nogil
    object (*body_to_py)(const ds_body *body)      # a Body holding a copy of ``body``
    # output capacity with which deflate_body of n bytes never reallocates out.data, so it
    # may compress into a caller's buffer of that size (then wrap it with body_view)
    size_t (*body_bound)(size_t n, size_t pad_to) noexcept nogil
    object (*body_view)(const ds_body *body, object buf)  # a Body whose data views buf
    const char *(*strerror)(int code) noexcept nogil
    # the message of an error code; for DS_EENGINE with the library call and its return code
    object (*error_text)(const ds_deflater *ws, int code)
