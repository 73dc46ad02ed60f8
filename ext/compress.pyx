"""Deflate bodies of gzip members, tar headers, and bounded raw inflate (GIL released).

Engines by ``level`` (see docs/COMPRESSION.md for measured speed and ratio):

* 0: stored deflate blocks (no compression, 5 bytes per 65535 bytes of input);
* 1, 2, 3: ISA-L igzip levels 1, 2, 3;
* 4 .. 9: zlib levels 4 .. 9 (raw deflate, windowBits -15, memLevel 8, default strategy).

Whatever the engine, a body is never larger than the stored encoding of the same input: when
the engine's output would exceed it (incompressible data), the body falls back to stored
blocks for that call. At the ISA-L levels, 64 KiB segments that look incompressible are
stored without trying to compress them. Output is a pure function of the input, level and
padding: no shared state (each call or owning object uses its own engine state), and no
dependence on where that state lies in memory (see LEAD).

The C functions are exported to framing.pyx and lmdbscan.pyx through the capsule ``_C_API``
(a ``ds_compress_api*``, see compress.pxd).
"""

import threading

from dsbackup.errors import ArchiveError, IntegrityError

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from compress cimport (
    DS_EENGINE,
    DS_ELEVEL,
    DS_ENOMEM,
    DS_ETOOBIG,
    DS_LIB_ISAL_DEFLATE,
    DS_LIB_Z_DEFLATE,
    DS_LIB_Z_INIT,
    DS_LIB_Z_RESET,
    DS_LIB_ZSTD,
    DS_OK,
    DS_ZSTD_STORED,
    DS_ZSTD_FRAME,
    DS_ZSTD_MAX_LEVEL,
    DS_CODEC_DEFLATE,
    DS_CODEC_ZSTD_STORED,
    DS_CODEC_ZSTD_FRAME,
    DS_CODEC_DEFLATE_SEALED,
    DS_DEFLATE_SEALED,
    ds_body,
    ds_chunk_level_ok,
    ds_compress_api,
    ds_deflater,
)
from libisal cimport (
    ISAL_BLOCK_FINISH,
    ISAL_DEF_LVL1_DEFAULT,
    ISAL_DEF_LVL2_DEFAULT,
    ISAL_DEF_LVL3_DEFAULT,
    ISAL_DEFLATE,
    ISAL_NEED_DICT,
    NO_FLUSH,
    SYNC_FLUSH,
    IGZIP_DEFLATE,
    ZSTATE_END,
    COMP_OK,
    IGZIP_GZIP_NO_HDR,
    crc32_gzip_refl,
    inflate_state,
    isal_deflate,
    isal_deflate_init,
    isal_inflate,
    isal_inflate_init,
    isal_zstream,
)
from libxxhash cimport (
    XXH3_64bits,
    XXH3_64bits_digest,
    XXH3_64bits_reset,
    XXH3_64bits_update,
    XXH3_createState,
    XXH3_freeState,
    XXH3_state_t,
)
from libzstd cimport (
    ZSTD_CCtx,
    ZSTD_DCtx,
    ZSTD_CONTENTSIZE_ERROR,
    ZSTD_CONTENTSIZE_UNKNOWN,
    ZSTD_CCtx_reset,
    ZSTD_CCtx_setParameter,
    ZSTD_DCtx_reset,
    ZSTD_DCtx_setParameter,
    ZSTD_dParameter,
    ZSTD_c_checksumFlag,
    ZSTD_c_compressionLevel,
    ZSTD_c_contentSizeFlag,
    ZSTD_c_dictIDFlag,
    ZSTD_compress2,
    ZSTD_compressBound,
    ZSTD_createCCtx,
    ZSTD_createDCtx,
    ZSTD_d_windowLogMax,
    ZSTD_decompressStream,
    ZSTD_freeCCtx,
    ZSTD_freeDCtx,
    ZSTD_getDictID_fromFrame,
    ZSTD_getErrorName,
    ZSTD_getFrameContentSize,
    ZSTD_isError,
    ZSTD_outBuffer,
    ZSTD_inBuffer,
    ZSTD_reset_session_only,
    ZSTD_versionString,
)
from libz cimport (
    Z_DEFAULT_STRATEGY,
    Z_DEFLATED,
    Z_FINISH,
    Z_NO_FLUSH,
    Z_OK,
    Z_STREAM_END,
    deflate,
    deflateEnd,
    deflateInit2,
    deflateReset,
    z_stream,
    zError,
)

ENGINES = {0: "stored", 1: "isal-1", 2: "isal-2", 3: "isal-3"}
ENGINES.update({lvl: f"zlib-{lvl}" for lvl in range(4, 10)})

STORED_TAR_PREFIX = b"\x00\x00\x02\xff\xfd"

cdef enum:
    ZERO_PIECE = 65536
    STORED_MAX = 65535
    MAX_STEP = 1 << 30          # largest avail_in / avail_out handed to a library at once


class MemberError(IntegrityError, ValueError):
    """A member's tar header or deflate stream is invalid, truncated or too large (exit 3).
    An ISA-L inflate failure names isal_inflate's return code."""

    description = "invalid archive member (tar header or deflate stream)"


class CompressionError(ArchiveError, RuntimeError):
    """ISA-L or zlib failed while compressing: the message names the library call and its
    return code beside the library's text (exit 2)."""

    description = "compression library failed"


# ----------------------------------------------------------------------------- bodies


cdef class Body:
    """A compressed member body: raw deflate blocks of ``input || zero padding``. ``data`` is
    ``bytes``, or a memoryview of a caller's buffer the body was compressed into.

    A zstd chunk body (docs/FORMAT.md §11.6; ``codec`` 1) is the frame || padding in stored
    blocks: ``input_len`` is the frame's length (the tar entry's), ``xxh3`` the frame's
    XXH3-64, ``content_len`` the payload's length; ``codec`` 2 is the bare frame (to be
    sealed). For deflate (``codec`` 0) ``content_len`` = ``input_len`` and ``xxh3`` is 0."""

    cdef readonly object data
    cdef readonly uint32_t crc32
    cdef readonly uint64_t size
    cdef readonly uint64_t input_len
    cdef readonly uint64_t content_len
    cdef readonly uint64_t xxh3
    cdef readonly int codec

    def __init__(self, object data, uint32_t crc32, uint64_t size, uint64_t input_len,
                 content_len=None, uint64_t xxh3=0, int codec=0):
        self.data = data
        self.crc32 = crc32
        self.size = size
        self.input_len = input_len
        self.content_len = input_len if content_len is None else content_len
        self.xxh3 = xxh3
        self.codec = codec

    def __repr__(self) -> str:
        return (f"Body(len={len(self.data)}, crc32={self.crc32:#010x}, size={self.size}, "
                f"input_len={self.input_len})")


cdef inline size_t stored_len(uint64_t total) noexcept nogil:
    if total == 0:
        return 5
    return <size_t>(total + 5 * ((total + STORED_MAX - 1) // STORED_MAX))


cdef uint32_t write_stored(const unsigned char *data, size_t n, size_t pad, unsigned char *out,
                           size_t *out_len, bint final_run=True,
                           uint32_t crc=0, bint with_crc=True) noexcept nogil:
    """Stored blocks of ``data || pad zeros`` into ``out`` (capacity stored_len(n + pad)).

    The last block has BFINAL set when ``final_run``. Returns the CRC-32 continued from
    ``crc`` over ``data || pad zeros``, computed block by block while it is in cache
    (``crc`` unchanged when not ``with_crc``).
    """
    cdef size_t total = n + pad, off = 0, blk, from_data, o = 0
    cdef int final
    if total == 0:
        out[0] = 1 if final_run else 0; out[1] = 0; out[2] = 0; out[3] = 0xff; out[4] = 0xff
        out_len[0] = 5
        return crc
    while off < total:
        blk = total - off
        if blk > STORED_MAX:
            blk = STORED_MAX
        final = final_run and off + blk == total
        out[o] = 1 if final else 0
        out[o + 1] = blk & 0xff
        out[o + 2] = (blk >> 8) & 0xff
        out[o + 3] = (~blk) & 0xff
        out[o + 4] = ((~blk) >> 8) & 0xff
        o += 5
        from_data = 0
        if off < n:
            from_data = n - off if n - off < blk else blk
            memcpy(out + o, data + off, from_data)
        if blk > from_data:
            memset(out + o + from_data, 0, blk - from_data)
        if with_crc:
            crc = crc32_gzip_refl(crc, out + o, blk)
        o += blk
        off += blk
    out_len[0] = o
    return crc


cdef int deflater_init(ds_deflater *ws) noexcept nogil:
    memset(ws, 0, sizeof(ds_deflater))
    ws.z_level = -1
    ws.zeros = <unsigned char *>calloc(ZERO_PIECE, 1)
    return DS_OK if ws.zeros != NULL else DS_ENOMEM


cdef void deflater_free(ds_deflater *ws) noexcept nogil:
    if ws.zs != NULL:
        if ws.z_level >= 0:
            deflateEnd(ws.zs)
        free(ws.zs)
    free(ws.isal)
    free(ws.level_buf)
    free(ws.zeros)
    if ws.zcctx != NULL:
        ZSTD_freeCCtx(<ZSTD_CCtx *>ws.zcctx)
    free(ws.zbuf)
    body_free(&ws.scratch)
    memset(ws, 0, sizeof(ds_deflater))
    ws.z_level = -1


cdef void body_free(ds_body *body) noexcept nogil:
    free(body.data)
    body.data = NULL
    body.len = 0
    body.cap = 0


cdef const char *ds_strerror(int code) noexcept nogil:
    if code == DS_ENOMEM:
        return "out of memory"
    if code == DS_ELEVEL:
        return "compression level must be 0..9 (gzip) or 1..19 (zstd)"
    if code == DS_EENGINE:
        return "compression engine reported an error"
    if code == DS_ETOOBIG:
        return "input too large"
    return "unknown error"


cdef inline int _lib_error(ds_deflater *ws, int lib, int ret) noexcept nogil:
    ws.lib = lib
    ws.lib_ret = ret
    return DS_EENGINE


_ISAL_DEFLATE_ERRORS = {-1: "STATELESS_OVERFLOW", -3: "ISAL_INVALID_STATE",
                        -4: "ISAL_INVALID_LEVEL", -5: "ISAL_INVALID_LEVEL_BUF",
                        -7: "INVALID_FLUSH", -8: "INVALID_PARAM", -9: "ISAL_INVALID_OPERATION"}
_Z_CALLS = {DS_LIB_Z_RESET: "deflateReset", DS_LIB_Z_INIT: "deflateInit2",
            DS_LIB_Z_DEFLATE: "deflate"}


cdef object ds_error_text(const ds_deflater *ws, int code):
    """The message of ``code``; an engine error names the library call and its return code."""
    if code != DS_EENGINE or ws == NULL or ws.lib == 0:
        return ds_strerror(code).decode()
    if ws.lib == DS_LIB_ZSTD:
        return f"libzstd: {ZSTD_getErrorName(ws.zstd_err).decode('ascii', 'replace')}"
    if ws.lib == DS_LIB_ISAL_DEFLATE:
        return (f"ISA-L isal_deflate returned {ws.lib_ret} "
                f"({_ISAL_DEFLATE_ERRORS.get(ws.lib_ret, 'unknown error')})")
    return (f"zlib {_Z_CALLS.get(ws.lib, 'call')} returned {ws.lib_ret} "
            f"({zError(ws.lib_ret).decode('ascii', 'replace')})")


cdef int _piece(const unsigned char *data, size_t n, size_t end, const unsigned char *zeros,
                size_t *pos, const unsigned char **p, size_t *plen) noexcept nogil:
    """Next input piece of bytes [pos, end) of the virtual stream ``data || zeros``; returns 1
    if it reaches ``end``."""
    cdef size_t start = pos[0], ln
    if start < n:
        ln = (end if end < n else n) - start
        if ln > MAX_STEP:
            ln = MAX_STEP
        p[0] = data + start
    else:
        ln = end - start
        if ln > ZERO_PIECE:
            ln = ZERO_PIECE
        p[0] = zeros
    plen[0] = ln
    pos[0] = start + ln
    return pos[0] == end


# ISA-L 2.30-2.32's x86 level 1/2 body (isal_deflate_icf_body_hash_hist_01/02/04), entered
# at a stream's first byte, hashes position 2 from a stale register (rcx, which holds the
# stream's address) instead of from the input. Where position 2 is filed in the hash table
# then depends on where the isal_zstream lies in memory: the output stays valid, but the same
# bytes can encode differently in another thread or process. The body leaves the last 16
# bytes of a flushed or final input to the finish routine, which starts a stream correctly;
# so at levels 1 and 2 every longer stream starts with its first LEAD bytes sync-flushed on
# their own, and the body only ever continues a stream (the rest of the stream still refers
# back to those bytes; the small cost per stream: docs/PERFORMANCE.md). Level 3 has another body,
# which starts streams correctly. Test: tests/ext/test_compress_address.py.
cdef enum:
    LEAD = 16


cdef isal_zstream *_isal_start(ds_deflater *ws, int level, int gzip_flag) noexcept nogil:
    """A freshly initialised ISA-L stream of ``ws`` for ``level``; NULL when out of memory."""
    cdef isal_zstream *s
    if ws.isal == NULL:
        ws.isal = <isal_zstream *>malloc(sizeof(isal_zstream))
        ws.level_buf_size = ISAL_DEF_LVL3_DEFAULT
        ws.level_buf = <unsigned char *>malloc(ws.level_buf_size)
        if ws.isal == NULL or ws.level_buf == NULL:
            return NULL
    s = ws.isal
    isal_deflate_init(s)
    s.level = level
    s.level_buf = ws.level_buf
    # each level's default buffer (a larger one changes block sizes and costs ratio)
    if level == 1:
        s.level_buf_size = ISAL_DEF_LVL1_DEFAULT
    elif level == 2:
        s.level_buf_size = ISAL_DEF_LVL2_DEFAULT
    else:
        s.level_buf_size = ISAL_DEF_LVL3_DEFAULT
    s.gzip_flag = gzip_flag
    s.flush = NO_FLUSH
    s.hist_bits = 0
    return s


# -- incompressible segments -------------------------------------------------------------
#
# Data that does not compress (random bytes, media, encrypted or already compressed blocks)
# costs ISA-L as much time as text and saves nothing. The input is cut into SEGMENT-byte
# segments and each is classified from a sample of its bytes; runs of incompressible segments
# are written as stored blocks, the other runs are compressed by ISA-L, each run as its own
# stream ended by a sync flush (an empty stored block that byte-aligns the output). See
# docs/COMPRESSION.md.

cdef enum:
    SEGMENT = 65536
    MIN_CLASSIFIED = 16384      # shorter segments are always compressed
    SAMPLE_RUN = 16             # bytes sampled ...
    SAMPLE_STRIDE = 128         # ... at the start of every SAMPLE_STRIDE bytes
    # a segment is incompressible when its sampled byte distribution has a collision
    # probability sum(p_i^2) <= 1 / COLLISION_INV, i.e. a Renyi-2 entropy >= log2(231) =
    # 7.85 bits per byte (uniform bytes: 8; English text: ~4.5; base64: ~6)
    COLLISION_INV = 231
    EARLY_CHECK = 1024          # samples between checks for an early "compressible"


cdef bint _incompressible(const unsigned char *p, size_t n) noexcept nogil:
    """Whether ``n`` bytes at ``p`` look incompressible (integer arithmetic: deterministic)."""
    cdef uint32_t h0[256]
    cdef uint32_t h1[256]
    cdef size_t off = 0
    cdef int i
    cdef uint64_t count = 0, sq = 0, c
    if n < MIN_CLASSIFIED:
        return False
    memset(h0, 0, sizeof(h0))
    memset(h1, 0, sizeof(h1))
    while off + SAMPLE_RUN <= n:
        for i in range(0, SAMPLE_RUN, 2):
            h0[p[off + i]] += 1
            h1[p[off + i + 1]] += 1
        count += SAMPLE_RUN
        off += SAMPLE_STRIDE
        if count % EARLY_CHECK == 0 and off + SAMPLE_RUN <= n:
            # clearly compressible data (text, structured records) is decided early
            sq = 0
            for i in range(256):
                c = h0[i] + h1[i]
                sq += c * c
            if sq * COLLISION_INV > 2 * count * count:
                return False
    sq = 0
    for i in range(256):
        c = h0[i] + h1[i]
        sq += c * c
    return sq * COLLISION_INV <= count * count


cdef inline bint _segment_incompressible(const unsigned char *data, size_t n,
                                         size_t start) noexcept nogil:
    """Classify the segment at ``start`` of ``data || padding`` by its data bytes."""
    cdef size_t ln
    if start >= n:
        return False
    ln = n - start
    if ln > SEGMENT:
        ln = SEGMENT
    return _incompressible(data + start, ln)


cdef uint32_t _crc_range(ds_deflater *ws, const unsigned char *data, size_t n, size_t a,
                         size_t b, uint32_t crc) noexcept nogil:
    """CRC-32 continued over bytes [a, b) of ``data || zeros``."""
    cdef size_t plen
    cdef const unsigned char *p
    while a < b:
        _piece(data, n, b, ws.zeros, &a, &p, &plen)
        crc = crc32_gzip_refl(crc, p, plen)
    return crc


cdef int _isal_run(ds_deflater *ws, const unsigned char *data, size_t n, size_t a, size_t b,
                   int level, bint last, int gzip_flag, unsigned char *out, size_t cap,
                   size_t *produced) noexcept nogil:
    """Bytes [a, b) (a < b) of ``data || zeros`` as one ISA-L stream appended at
    ``out + produced``: final when ``last``, else ended by a sync flush. ``gzip_flag``
    IGZIP_GZIP_NO_HDR appends the CRC-32/ISIZE trailer (the CRC comes free with the
    compression). 1 if it fit in ``cap``, 0 if not, <0 on error.

    At levels 1 and 2 the first LEAD bytes of a longer run go in with a sync flush of their
    own (see LEAD)."""
    cdef isal_zstream *s = _isal_start(ws, level, gzip_flag)
    cdef size_t plen, step
    cdef size_t lead_end = a + LEAD if level <= 2 and b - a > LEAD else b
    cdef size_t end
    cdef const unsigned char *p
    cdef bint reached, final_piece
    cdef int ret
    if s == NULL:
        return DS_ENOMEM
    while True:
        end = lead_end if a < lead_end else b
        reached = _piece(data, n, end, ws.zeros, &a, &p, &plen)
        final_piece = reached and end == b
        s.next_in = <uint8_t *>p
        s.avail_in = <uint32_t>plen
        s.end_of_stream = last and final_piece
        s.flush = SYNC_FLUSH if reached and not s.end_of_stream else NO_FLUSH
        while True:
            step = cap - produced[0]
            if step > MAX_STEP:
                step = MAX_STEP
            s.next_out = out + produced[0]
            s.avail_out = <uint32_t>step
            ret = isal_deflate(s)
            if ret != COMP_OK:
                return _lib_error(ws, DS_LIB_ISAL_DEFLATE, ret)
            produced[0] += step - s.avail_out
            if s.end_of_stream:
                if s.internal_state.state == ZSTATE_END:
                    return 1
            elif s.avail_in == 0 and (s.flush == NO_FLUSH or s.avail_out > 0):
                break      # piece consumed (and, when flushed, the flush written)
            if produced[0] == cap:
                return 0
        if final_piece:
            return 1


cdef int _deflate_segmented(ds_deflater *ws, const unsigned char *data, size_t n, size_t pad,
                            int level, unsigned char *out, size_t cap, size_t *out_len,
                            uint32_t *crc_out, bint with_crc) noexcept nogil:
    """Mixed runs of stored and ISA-L-compressed segments (see above); 1 if the output fit
    in ``cap``, 0 if not, <0 on error. The CRC-32 (0 when not ``with_crc``) in crc_out."""
    cdef size_t total = n + pad, a = 0, b, produced = 0, dn, slen
    cdef bint kind, next_kind, last
    cdef uint32_t crc = 0
    cdef int r
    kind = _segment_incompressible(data, n, 0)
    while a < total:
        b = a
        while True:
            b = b + SEGMENT if total - b > SEGMENT else total
            if b >= total:
                break
            next_kind = _segment_incompressible(data, n, b)
            if next_kind != kind:
                break
        last = b >= total
        if kind:
            dn = (b if b < n else n) - a if a < n else 0
            if produced + stored_len(b - a) > cap:
                return 0
            crc = write_stored(data + a, dn, (b - a) - dn, out + produced, &slen, last, crc,
                               with_crc)
            produced += slen
        else:
            r = _isal_run(ws, data, n, a, b, level, last, IGZIP_DEFLATE, out, cap,
                          &produced)
            if r != 1:
                return r
            if with_crc:
                crc = _crc_range(ws, data, n, a, b, crc)
        a = b
        if not last:
            kind = next_kind
    out_len[0] = produced
    crc_out[0] = crc
    return 1


cdef int _classify(const unsigned char *data, size_t n) noexcept nogil:
    """0: no incompressible segment; 1: some; 2: every segment of the data is."""
    cdef size_t start = 0
    cdef int hits = 0, segs = 0
    while start < n:
        segs += 1
        if _segment_incompressible(data, n, start):
            hits += 1
        elif hits:
            return 1
        start += SEGMENT
    if hits == 0:
        return 0
    return 2 if hits == segs else 1


cdef int _deflate_zlib(ds_deflater *ws, const unsigned char *data, size_t n, size_t pad,
                       int level, unsigned char *out, size_t cap, size_t *out_len) noexcept nogil:
    """zlib raw deflate into ``out``; returns 1 if it fit in ``cap``, 0 if not, <0 on error."""
    cdef z_stream *zs
    cdef size_t pos = 0, plen, produced = 0, step
    cdef const unsigned char *p
    cdef int last = 0, ret
    if ws.zs == NULL:
        ws.zs = <z_stream *>calloc(1, sizeof(z_stream))
        if ws.zs == NULL:
            return DS_ENOMEM
    zs = ws.zs
    if ws.z_level == level:
        ret = deflateReset(zs)
        if ret != Z_OK:
            return _lib_error(ws, DS_LIB_Z_RESET, ret)
    else:
        if ws.z_level >= 0:
            deflateEnd(zs)
            ws.z_level = -1
        memset(zs, 0, sizeof(z_stream))
        ret = deflateInit2(zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY)
        if ret != Z_OK:
            return DS_ENOMEM if ret == -4 else _lib_error(ws, DS_LIB_Z_INIT, ret)
        ws.z_level = level
    while True:
        last = _piece(data, n, n + pad, ws.zeros, &pos, &p, &plen)
        zs.next_in = <unsigned char *>p
        zs.avail_in = <unsigned int>plen
        while True:
            step = cap - produced
            if step > MAX_STEP:
                step = MAX_STEP
            zs.next_out = out + produced
            zs.avail_out = <unsigned int>step
            ret = deflate(zs, Z_FINISH if last else Z_NO_FLUSH)
            produced += step - zs.avail_out
            if ret == Z_STREAM_END:
                out_len[0] = produced
                return 1
            if ret != Z_OK and ret != -5:      # -5 = Z_BUF_ERROR: no progress possible
                return _lib_error(ws, DS_LIB_Z_DEFLATE, ret)
            if not last and zs.avail_in == 0:
                break
            if produced == cap:
                return 0
        if last:
            break
    return DS_EENGINE


cdef int deflate_body_c(ds_deflater *ws, const unsigned char *data, size_t n, int level,
                        size_t pad_to, ds_body *out) noexcept nogil:
    """Compress ``data || zeros to a multiple of pad_to`` into ``out``.

    ``out.data`` is reused when it is large enough (the caller owns and frees it). ISA-L
    computes the CRC while it compresses (gzip mode without header: the 8-byte trailer it
    appends is read and dropped); the other engines get a separate CRC pass. At levels 1-3,
    incompressible segments are stored (see _deflate_segmented).

    A ``level`` of DS_DEFLATE_SEALED + L compresses at level L to the same bytes but computes
    no CRC-32 (out.crc = 0, out.codec DS_CODEC_DEFLATE_SEALED): the body an encrypted archive
    seals, whose member CRC covers the ciphertext (docs/FORMAT.md §11.4).
    """
    cdef size_t pad = 0, total, cap
    cdef unsigned char *buf
    cdef unsigned char *t
    cdef int r = 1, mix = 0
    cdef bint with_crc = True
    out.len = 0
    out.crc = 0
    if DS_DEFLATE_SEALED <= level <= DS_DEFLATE_SEALED + 9:
        level -= DS_DEFLATE_SEALED
        with_crc = False
    elif level >= DS_ZSTD_STORED:
        return zstd_body_c(ws, data, n, level, out)
    out.codec = DS_CODEC_DEFLATE if with_crc else DS_CODEC_DEFLATE_SEALED
    out.xxh3 = 0
    if level < 0 or level > 9:
        return DS_ELEVEL
    if pad_to > 1 and n % pad_to:
        pad = pad_to - n % pad_to
    total = n + pad
    if total < n or total > (<size_t>-1) // 2:
        return DS_ETOOBIG
    cap = stored_len(total)
    if out.data == NULL or out.cap < cap + 8:
        buf = <unsigned char *>malloc(cap + 8)
        if buf == NULL:
            return DS_ENOMEM
        free(out.data)
        out.data = buf
        out.cap = cap + 8
    out.size = total
    out.input_len = n
    if total == 0 or level == 0:
        r = 0
    elif level <= 3:
        mix = _classify(data, n)
        if mix == 2 and n + SEGMENT > total:   # all incompressible (padding < one segment)
            r = 0
        elif mix:
            r = _deflate_segmented(ws, data, n, pad, level, out.data, cap, &out.len, &out.crc,
                                   with_crc)
        elif not with_crc:             # the same deflate stream, without the trailer
            r = _isal_run(ws, data, n, 0, total, level, True, IGZIP_DEFLATE, out.data, cap,
                          &out.len)
            if r == 1 and out.len + 8 > cap:   # stored when the gzip run's would have been
                r = 0
        else:
            r = _isal_run(ws, data, n, 0, total, level, True, IGZIP_GZIP_NO_HDR, out.data,
                          cap + 8, &out.len)
        if r == 1 and not mix and with_crc:
            if out.len > cap:          # deflate + trailer larger than stored blocks
                r = 0
            else:
                out.len -= 8
                t = out.data + out.len
                out.crc = (<uint32_t>t[0] | (<uint32_t>t[1] << 8) | (<uint32_t>t[2] << 16)
                           | (<uint32_t>t[3] << 24))
    else:
        r = _deflate_zlib(ws, data, n, pad, level, out.data, cap, &out.len)
        if r == 1 and with_crc:
            out.crc = _crc_range(ws, data, n, 0, total, 0)
    if r < 0:
        return r
    if r == 0:
        out.crc = write_stored(data, n, pad, out.data, &out.len, True, 0, with_crc)
    out.content_len = n
    return DS_OK


cdef size_t body_bound(size_t n, size_t pad_to) noexcept nogil:
    """Bytes of output buffer with which deflate_body_c of n bytes never reallocates (either
    codec: a zstd frame is at most ZSTD_compressBound(n) bytes)."""
    cdef size_t total = ZSTD_compressBound(n)
    if total < n:
        total = n
    if pad_to > 1 and total % pad_to:
        total += pad_to - total % pad_to
    return stored_len(total) + 8


cdef object body_view(const ds_body *body, object buf):
    """A :class:`Body` for ``body`` compressed into the caller's ``buf`` (no copy)."""
    cdef Body b = Body.__new__(Body)
    b.data = memoryview(buf)[:body.len]
    b.crc32 = body.crc
    b.size = body.size
    b.input_len = body.input_len
    b.content_len = body.content_len
    b.xxh3 = body.xxh3
    b.codec = body.codec
    return b


cdef object body_to_py(const ds_body *body):
    """A :class:`Body` holding a copy of ``body``."""
    cdef Body b = Body.__new__(Body)
    b.data = PyBytes_FromStringAndSize(<char *>body.data, body.len)
    b.crc32 = body.crc
    b.size = body.size
    b.input_len = body.input_len
    b.content_len = body.content_len
    b.xxh3 = body.xxh3
    b.codec = body.codec
    return b


cdef class _Deflater:
    """Per-thread engine state for :func:`deflate_body` (see ``_tls``)."""

    cdef ds_deflater ws

    def __cinit__(self):
        if deflater_init(&self.ws) != DS_OK:
            raise MemoryError("deflate_body: cannot allocate engine state")

    def __dealloc__(self):
        deflater_free(&self.ws)

    def __reduce__(self):
        raise TypeError("engine state cannot be pickled")


_tls = threading.local()


def deflate_body(const unsigned char[::1] data, int level, size_t pad_to=512) -> Body:
    """Compress ``data || zero padding to a multiple of pad_to`` as raw deflate blocks; a
    ``level`` of DS_ZSTD_STORED/DS_ZSTD_FRAME + L gives a zstd body (see Body), one of
    DS_DEFLATE_SEALED + L the deflate body without its CRC-32 (see deflate_body_c)."""
    cdef _Deflater d
    cdef size_t n = data.shape[0]
    cdef const unsigned char *p = &data[0] if n else NULL
    cdef int r
    if not ds_chunk_level_ok(level):
        raise ValueError(f"compression level must be 0..9 (deflate) or a chunk level "
                         f"(dsbackup.codec: {DS_ZSTD_STORED}+1..19, {DS_ZSTD_FRAME}+1..19, "
                         f"{DS_DEFLATE_SEALED}+0..9), got {level}")
    if pad_to == 0:
        raise ValueError("pad_to must be >= 1")
    d = getattr(_tls, "deflater", None)
    if d is None:
        d = _Deflater()
        _tls.deflater = d
    with nogil:
        r = deflate_body_c(&d.ws, p, n, level, pad_to, &d.ws.scratch)
    if r == DS_ENOMEM:
        raise MemoryError(f"deflate_body: out of memory compressing {n} bytes at level {level}")
    if r != DS_OK:
        raise CompressionError(f"deflate_body: {ds_error_text(&d.ws, r)} (level {level}, {n} bytes)")
    body = body_to_py(&d.ws.scratch)
    if d.ws.scratch.cap > (<size_t>64 << 20):
        body_free(&d.ws.scratch)  # keep at most 64 MiB of scratch per thread
    return body


include "zstdcodec.pxi"
include "tarheader.pxi"
include "inflate.pxi"


# ----------------------------------------------------------------------------- C API


cdef ds_compress_api _api
_api.deflate_body = deflate_body_c
_api.deflater_init = deflater_init
_api.deflater_free = deflater_free
_api.body_free = body_free
_api.body_to_py = body_to_py
_api.body_bound = body_bound
_api.body_view = body_view
_api.strerror = ds_strerror
_api.error_text = ds_error_text
_C_API = PyCapsule_New(&_api, "dsbackup._ext.compress._C_API", NULL)
