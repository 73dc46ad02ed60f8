# The zstd chunk codec (docs/FORMAT.md §11.6), an include of compress.pyx: compress a chunk
# payload into one zstd frame (bare, or in stored deflate blocks with the CRC-32 and the
# frame's XXH3-64), and decode such a frame straight out of a member's stored blocks.

ZSTD_VERSION = ZSTD_versionString().decode()
ZSTD_MAX_LEVEL = DS_ZSTD_MAX_LEVEL


cdef int _zstd_error(ds_deflater *ws, size_t code) noexcept nogil:
    ws.zstd_err = code
    ws.lib = DS_LIB_ZSTD
    ws.lib_ret = 0
    return DS_EENGINE


cdef int _zstd_frame(ds_deflater *ws, const unsigned char *data, size_t n, int level,
                     unsigned char *dst, size_t cap, size_t *flen) noexcept nogil:
    """One zstd frame of ``data`` (content size in the header, no checksum, no dict ID)."""
    cdef size_t r
    cdef ZSTD_CCtx *cc = <ZSTD_CCtx *>ws.zcctx
    if cc == NULL:
        cc = ZSTD_createCCtx()
        if cc == NULL:
            return DS_ENOMEM
        ws.zcctx = cc
        ws.zlevel = 0
        r = ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 0)
        if not ZSTD_isError(r):
            r = ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 1)
        if not ZSTD_isError(r):
            r = ZSTD_CCtx_setParameter(cc, ZSTD_c_dictIDFlag, 0)
        if ZSTD_isError(r):
            return _zstd_error(ws, r)
    if ws.zlevel != level:
        r = ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level)
        if ZSTD_isError(r):
            return _zstd_error(ws, r)
        ws.zlevel = level
    r = ZSTD_compress2(cc, dst, cap, data, n)
    if ZSTD_isError(r):
        ZSTD_CCtx_reset(cc, ZSTD_reset_session_only)
        return _zstd_error(ws, r)
    flen[0] = r
    return DS_OK


cdef int _ensure(ds_body *out, size_t cap) noexcept nogil:
    cdef unsigned char *buf
    if out.data == NULL or out.cap < cap:
        buf = <unsigned char *>malloc(cap)
        if buf == NULL:
            return DS_ENOMEM
        free(out.data)
        out.data = buf
        out.cap = cap
    return DS_OK


cdef int zstd_body_c(ds_deflater *ws, const unsigned char *data, size_t n, int level,
                     ds_body *out) noexcept nogil:
    """``level``: DS_ZSTD_STORED + L (frame || padding to 512 in stored blocks, with its CRC-32
    and the frame's XXH3-64) or DS_ZSTD_FRAME + L (the bare frame)."""
    cdef bint stored = level < DS_ZSTD_FRAME
    cdef int zl = level - (DS_ZSTD_STORED if stored else DS_ZSTD_FRAME)
    cdef size_t bound, flen = 0, pad
    cdef unsigned char *nb
    cdef int r
    if zl < 1 or zl > DS_ZSTD_MAX_LEVEL:
        return DS_ELEVEL
    bound = ZSTD_compressBound(n)
    if bound == 0 or bound > (<size_t>-1) // 4:
        return DS_ETOOBIG
    out.len = 0
    out.content_len = n
    if not stored:
        if _ensure(out, bound + 8) != DS_OK:
            return DS_ENOMEM
        r = _zstd_frame(ws, data, n, zl, out.data, out.cap, &flen)
        if r != DS_OK:
            return r
        out.len = flen
        out.size = flen
        out.input_len = flen
        out.crc = 0
        out.xxh3 = 0
        out.codec = DS_CODEC_ZSTD_FRAME
        return DS_OK
    if ws.zbuf == NULL or ws.zbuf_cap < bound:
        nb = <unsigned char *>malloc(bound)
        if nb == NULL:
            return DS_ENOMEM
        free(ws.zbuf)
        ws.zbuf = nb
        ws.zbuf_cap = bound
    r = _zstd_frame(ws, data, n, zl, ws.zbuf, ws.zbuf_cap, &flen)
    if r != DS_OK:
        return r
    pad = (512 - flen % 512) % 512
    if _ensure(out, stored_len(flen + pad) + 8) != DS_OK:
        return DS_ENOMEM
    out.crc = write_stored(ws.zbuf, flen, pad, out.data, &out.len)
    out.size = flen + pad
    out.input_len = flen
    out.xxh3 = XXH3_64bits(ws.zbuf, flen)
    out.codec = DS_CODEC_ZSTD_STORED
    if ws.zbuf_cap > (<size_t>64 << 20):
        free(ws.zbuf)
        ws.zbuf = NULL
        ws.zbuf_cap = 0
    return DS_OK


cdef enum:
    ZD_OK = 0
    ZD_EBLOCK = -1         # a stored block header is invalid or the blocks are cut short
    ZD_ESHAPE = -2         # block lengths other than 65535 before the last, or wrong total
    ZD_EPAD = -3           # non-zero tar padding
    ZD_EZSTD = -4          # libzstd reported an error (zerr)
    ZD_ETRAIL = -5         # bytes after the frame
    ZD_ESHORT = -6         # the frame ends early (truncated)
    ZD_EMORE = -7          # the frame decompresses to more than its declared size
    ZD_ENOMEM = -8


cdef int _zstd_feed(ZSTD_DCtx *dc, const unsigned char *p, size_t m, ZSTD_outBuffer *ob,
                    bint *done, size_t *zerr) noexcept nogil:
    cdef ZSTD_inBuffer ib
    cdef size_t r, ipos, opos
    ib.src = p
    ib.size = m
    ib.pos = 0
    while ib.pos < ib.size:
        if done[0]:
            return ZD_ETRAIL
        ipos = ib.pos
        opos = ob.pos
        r = ZSTD_decompressStream(dc, ob, &ib)
        if ZSTD_isError(r):
            zerr[0] = r
            return ZD_EZSTD
        if r == 0:
            done[0] = True
        elif ib.pos == ipos and ob.pos == opos:
            return ZD_EMORE
    return ZD_OK


cdef int _zstd_walk(ZSTD_DCtx *dc, const unsigned char *buf, size_t n, uint64_t frame_len,
                    bint stored, ZSTD_outBuffer *ob, uint32_t *crc, XXH3_state_t *xs,
                    size_t *zerr) noexcept nogil:
    cdef size_t pos = 0, blk, fed = 0, m, total = 0, k
    cdef uint64_t padded = frame_len + (512 - frame_len % 512) % 512
    cdef bint done = False, final = False
    cdef const unsigned char *p
    cdef int r
    if not stored:
        XXH3_64bits_update(xs, buf, n)
        r = _zstd_feed(dc, buf, n, ob, &done, zerr)
        if r != ZD_OK:
            return r
        return ZD_OK if done else ZD_ESHORT
    while not final:
        if n - pos < 5:
            return ZD_EBLOCK
        if buf[pos] > 1:
            return ZD_EBLOCK
        final = buf[pos] == 1
        blk = buf[pos + 1] | (<size_t>buf[pos + 2] << 8)
        if (buf[pos + 3] | (<size_t>buf[pos + 4] << 8)) != (blk ^ 0xFFFF):
            return ZD_EBLOCK
        pos += 5
        if n - pos < blk:
            return ZD_EBLOCK
        if not final and blk != STORED_MAX:
            return ZD_ESHAPE
        p = buf + pos
        crc[0] = crc32_gzip_refl(crc[0], p, blk)
        m = frame_len - fed if frame_len - fed < blk else blk
        if m:
            XXH3_64bits_update(xs, p, m)
            r = _zstd_feed(dc, p, m, ob, &done, zerr)
            if r != ZD_OK:
                return r
            fed += m
        for k in range(m, blk):
            if p[k]:
                return ZD_EPAD
        total += blk
        pos += blk
    if pos != n or total != padded:
        return ZD_ESHAPE
    return ZD_OK if done else ZD_ESHORT


cdef inline bint _zstd_magic(const unsigned char *p, size_t n) noexcept nogil:
    """``p`` starts with a zstd frame's magic (28 b5 2f fd): libzstd also takes a skippable
    frame for a frame (content size 0, decoded to nothing), which §11.6 excludes."""
    return n >= 4 and p[0] == 0x28 and p[1] == 0xb5 and p[2] == 0x2f and p[3] == 0xfd


# ZSTD_d_stableOutBuffer (ZSTD_d_experimentalParam2): the output buffer stays the same across
# ZSTD_decompressStream calls, so frames decode straight into it, without a window buffer and
# its copy. An enum value passed to the stable ZSTD_DCtx_setParameter; a library that does
# not know it refuses it and decodes through its window (the same bytes).
cdef int ZD_STABLE_OUT = 1001


cdef class _Dctx:
    """A thread's reused zstd decoder (see zstd_decode)."""

    cdef ZSTD_DCtx *dc
    cdef bint stable

    def __cinit__(self):
        self.dc = ZSTD_createDCtx()
        if self.dc == NULL:
            raise MemoryError("zstd_decode: cannot allocate a decoder")
        self.stable = not ZSTD_isError(ZSTD_DCtx_setParameter(
            self.dc, <ZSTD_dParameter>ZD_STABLE_OUT, 1))

    def __dealloc__(self):
        ZSTD_freeDCtx(self.dc)

    def __reduce__(self):
        raise TypeError("decoder state cannot be pickled")


_ZD_TEXT = {ZD_EBLOCK: "invalid or truncated stored block",
            ZD_ESHAPE: "stored blocks of the wrong lengths (every block but the last must hold "
                       "65535 bytes, all of them the padded frame)",
            ZD_EPAD: "non-zero tar padding", ZD_ETRAIL: "bytes after the zstd frame",
            ZD_ESHORT: "zstd frame truncated",
            ZD_EMORE: "zstd frame decompresses to more than its declared size"}


def zstd_decode(const unsigned char[::1] buf, uint64_t frame_len, uint64_t content_len,
                bint stored, uint32_t crc=0, out=None) -> tuple:
    """Decode the one zstd frame of a chunk (docs/FORMAT.md §11.6) into exactly
    ``content_len`` bytes: ``buf`` is the bare frame, or (``stored``) the member's stored
    blocks after the tar header's, read in place. Returns ``(payload, crc, xxh3)``: the CRC-32
    continued from ``crc`` over the blocks' data (frame || padding) and the frame's XXH3-64.
    The frame header is checked before anything is allocated: one frame, content size
    present and equal to ``content_len``, no dictionary. MemberError on any failure.
    ``out``: a writable buffer of ``content_len`` bytes or more to decode into (a reused
    one); the payload returned is then a view of its first ``content_len`` bytes."""
    cdef size_t n = buf.shape[0], avail, zerr = 0, blk
    cdef const unsigned char *p = &buf[0] if n else NULL
    cdef const unsigned char *first
    cdef unsigned long long fcs
    cdef int wl = 10, r
    cdef _Dctx holder
    cdef ZSTD_DCtx *dc
    cdef ZSTD_outBuffer ob
    cdef XXH3_state_t *xs
    cdef uint64_t digest
    cdef uint32_t c = crc
    cdef unsigned char[::1] dst
    if stored:
        if n < 5:
            raise MemberError("zstd chunk: no stored block")
        blk = p[1] | (<size_t>p[2] << 8)
        first = p + 5
        avail = blk if blk < n - 5 else n - 5
    else:
        if n != frame_len:
            raise MemberError(f"zstd chunk: {n} bytes, the frame is declared {frame_len}")
        first = p
        avail = n
    if avail > frame_len:
        avail = frame_len
    fcs = ZSTD_getFrameContentSize(first, avail)
    if fcs == ZSTD_CONTENTSIZE_ERROR or not _zstd_magic(first, avail):  # (not skippable)
        raise MemberError("zstd chunk: not a zstd frame (bad magic or frame header)")
    if fcs == ZSTD_CONTENTSIZE_UNKNOWN:
        raise MemberError("zstd chunk: the frame does not declare its content size")
    if fcs != content_len:
        raise MemberError(f"zstd chunk: the frame declares {fcs} bytes of content, the index "
                          f"{content_len}")
    if ZSTD_getDictID_fromFrame(first, avail) != 0:
        raise MemberError("zstd chunk: the frame needs a dictionary")
    while wl < 31 and (<uint64_t>1 << wl) < content_len:
        wl += 1
    if out is None:
        out = PyBytes_FromStringAndSize(NULL, content_len)
        ob.dst = PyBytes_AS_STRING(out)
    else:
        dst = out
        if <uint64_t>dst.shape[0] < content_len:
            raise MemberError(f"zstd chunk: {content_len} bytes of content do not fit the "
                              f"{dst.shape[0]}-byte buffer")
        out = memoryview(out)[:content_len]
        ob.dst = &dst[0] if content_len else NULL
    ob.size = content_len
    ob.pos = 0
    holder = getattr(_tls, "dctx", None)
    if holder is None:
        holder = _Dctx()
        _tls.dctx = holder
    dc = holder.dc
    xs = XXH3_createState()
    if xs == NULL:
        raise MemoryError("zstd_decode: cannot allocate an XXH3 state")
    with nogil:
        ZSTD_DCtx_reset(dc, ZSTD_reset_session_only)
        ZSTD_DCtx_setParameter(dc, ZSTD_d_windowLogMax, wl)
        XXH3_64bits_reset(xs)
        r = _zstd_walk(dc, p, n, frame_len, stored, &ob, &c, xs, &zerr)
        digest = XXH3_64bits_digest(xs)
        if r != ZD_OK:  # a failed frame leaves the decoder mid-frame
            ZSTD_DCtx_reset(dc, ZSTD_reset_session_only)
    XXH3_freeState(xs)
    if r == ZD_EZSTD:
        raise MemberError(f"zstd chunk: {ZSTD_getErrorName(zerr).decode('ascii', 'replace')}")
    if r != ZD_OK:
        raise MemberError(f"zstd chunk: {_ZD_TEXT[r]}")
    if ob.pos != content_len:
        raise MemberError(f"zstd chunk: the frame decompresses to {ob.pos} bytes, declared "
                          f"{content_len}")
    return out, c, digest


def zstd_content_size(const unsigned char[::1] frame) -> int:
    """The content size a zstd frame's header declares; -1 when it declares none, -2 when
    ``frame`` does not start with a valid zstd frame header."""
    cdef size_t n = frame.shape[0]
    cdef unsigned long long fcs
    if n == 0:
        return -2
    fcs = ZSTD_getFrameContentSize(&frame[0], n)
    if fcs == ZSTD_CONTENTSIZE_ERROR or not _zstd_magic(&frame[0], n):
        return -2
    if fcs == ZSTD_CONTENTSIZE_UNKNOWN:
        return -1
    return fcs
