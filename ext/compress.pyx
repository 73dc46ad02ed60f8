"""Deflate bodies of gzip members, tar headers, and bounded raw inflate (GIL released).

Engines by ``level`` (see docs/COMPRESSION.md for measured speed and ratio):

* 0: stored deflate blocks (no compression, 5 bytes per 65535 bytes of input);
* 1, 2, 3: ISA-L igzip levels 1, 2, 3;
* 4 .. 9: zlib levels 4 .. 9 (raw deflate, windowBits -15, memLevel 8, default strategy).

Whatever the engine, a body is never larger than the stored encoding of the same input: when
the engine's output would exceed it (incompressible data), the body falls back to stored
blocks for that call. Output is deterministic for the same input and level (no shared
state; each call or owning object uses its own engine state).

The C functions are exported to framing.pyx and lmdbscan.pyx through the capsule ``_C_API``
(a ``ds_compress_api*``, see compress.pxd).
"""

import threading

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
    DS_OK,
    ds_body,
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
    ZSTATE_END,
    COMP_OK,
    IGZIP_DEFLATE,
    crc32_gzip_refl,
    inflate_state,
    isal_deflate,
    isal_deflate_init,
    isal_inflate,
    isal_inflate_init,
    isal_zstream,
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
)

ENGINES = {0: "stored", 1: "isal-1", 2: "isal-2", 3: "isal-3"}
ENGINES.update({lvl: f"zlib-{lvl}" for lvl in range(4, 10)})

STORED_TAR_PREFIX = b"\x00\x00\x02\xff\xfd"

cdef enum:
    ZERO_PIECE = 65536
    STORED_MAX = 65535
    MAX_STEP = 1 << 30          # largest avail_in / avail_out handed to a library at once


class MemberError(ValueError):
    """A member's tar header or deflate stream is invalid, truncated or too large."""


# ----------------------------------------------------------------------------- bodies


cdef class Body:
    """A compressed member body: raw deflate blocks of ``input || zero padding``."""

    cdef readonly bytes data
    cdef readonly uint32_t crc32
    cdef readonly uint64_t size
    cdef readonly uint64_t input_len

    def __init__(self, bytes data, uint32_t crc32, uint64_t size, uint64_t input_len):
        self.data = data
        self.crc32 = crc32
        self.size = size
        self.input_len = input_len

    def __repr__(self) -> str:
        return (f"Body(len={len(self.data)}, crc32={self.crc32:#010x}, size={self.size}, "
                f"input_len={self.input_len})")


cdef inline size_t stored_len(uint64_t total) noexcept nogil:
    if total == 0:
        return 5
    return <size_t>(total + 5 * ((total + STORED_MAX - 1) // STORED_MAX))


cdef void write_stored(const unsigned char *data, size_t n, size_t pad, unsigned char *out,
                       size_t *out_len) noexcept nogil:
    """Stored blocks of ``data || pad zeros`` into ``out`` (capacity stored_len(n + pad))."""
    cdef size_t total = n + pad, off = 0, blk, from_data, o = 0
    cdef int final
    if total == 0:
        out[0] = 1; out[1] = 0; out[2] = 0; out[3] = 0xff; out[4] = 0xff
        out_len[0] = 5
        return
    while off < total:
        blk = total - off
        if blk > STORED_MAX:
            blk = STORED_MAX
        final = off + blk == total
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
        o += blk
        off += blk
    out_len[0] = o


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
        return "compression level must be 0..9"
    if code == DS_EENGINE:
        return "compression engine reported an error"
    if code == DS_ETOOBIG:
        return "input too large"
    return "unknown error"


cdef int _piece(const unsigned char *data, size_t n, size_t pad, const unsigned char *zeros,
                size_t *pos, const unsigned char **p, size_t *plen) noexcept nogil:
    """Next input piece of the virtual stream ``data || pad zeros``; returns 1 if it is last."""
    cdef size_t total = n + pad, start = pos[0], ln
    if start < n:
        ln = n - start
        if ln > MAX_STEP:
            ln = MAX_STEP
        p[0] = data + start
    else:
        ln = total - start
        if ln > ZERO_PIECE:
            ln = ZERO_PIECE
        p[0] = zeros
    plen[0] = ln
    pos[0] = start + ln
    return pos[0] == total


cdef int _deflate_isal(ds_deflater *ws, const unsigned char *data, size_t n, size_t pad,
                       int level, unsigned char *out, size_t cap, size_t *out_len) noexcept nogil:
    """ISA-L raw deflate into ``out``; returns 1 if it fit in ``cap``, 0 if not, <0 on error."""
    cdef isal_zstream *s
    cdef size_t pos = 0, plen, produced = 0, step
    cdef const unsigned char *p
    cdef int last = 0
    if ws.isal == NULL:
        ws.isal = <isal_zstream *>malloc(sizeof(isal_zstream))
        ws.level_buf_size = ISAL_DEF_LVL3_DEFAULT
        ws.level_buf = <unsigned char *>malloc(ws.level_buf_size)
        if ws.isal == NULL or ws.level_buf == NULL:
            return DS_ENOMEM
    s = ws.isal
    isal_deflate_init(s)
    s.level = level
    s.level_buf = ws.level_buf
    # each level's default buffer (a larger one changes block sizes and costs ~2% ratio)
    if level == 1:
        s.level_buf_size = ISAL_DEF_LVL1_DEFAULT
    elif level == 2:
        s.level_buf_size = ISAL_DEF_LVL2_DEFAULT
    else:
        s.level_buf_size = ISAL_DEF_LVL3_DEFAULT
    s.gzip_flag = IGZIP_DEFLATE
    s.flush = NO_FLUSH
    s.hist_bits = 0
    while True:
        last = _piece(data, n, pad, ws.zeros, &pos, &p, &plen)
        s.next_in = <uint8_t *>p
        s.avail_in = <uint32_t>plen
        s.end_of_stream = last
        while True:
            step = cap - produced
            if step > MAX_STEP:
                step = MAX_STEP
            s.next_out = out + produced
            s.avail_out = <uint32_t>step
            if isal_deflate(s) != COMP_OK:
                return DS_EENGINE
            produced += step - s.avail_out
            if last:
                if s.internal_state.state == ZSTATE_END:
                    out_len[0] = produced
                    return 1
            elif s.avail_in == 0:
                break
            if produced == cap:
                return 0
        if last:
            break
    return DS_EENGINE


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
        if deflateReset(zs) != Z_OK:
            return DS_EENGINE
    else:
        if ws.z_level >= 0:
            deflateEnd(zs)
            ws.z_level = -1
        memset(zs, 0, sizeof(z_stream))
        ret = deflateInit2(zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY)
        if ret != Z_OK:
            return DS_ENOMEM if ret == -4 else DS_EENGINE
        ws.z_level = level
    while True:
        last = _piece(data, n, pad, ws.zeros, &pos, &p, &plen)
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
                return DS_EENGINE
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

    ``out.data`` is reused when it is large enough (the caller owns and frees it).
    """
    cdef size_t pad = 0, total, cap, pos = 0, plen
    cdef uint32_t crc
    cdef const unsigned char *p
    cdef unsigned char *buf
    cdef int r = 1, last = 0
    out.len = 0
    if level < 0 or level > 9:
        return DS_ELEVEL
    if pad_to > 1 and n % pad_to:
        pad = pad_to - n % pad_to
    total = n + pad
    if total < n or total > (<size_t>-1) // 2:
        return DS_ETOOBIG
    cap = stored_len(total)
    if out.data == NULL or out.cap < cap:
        buf = <unsigned char *>malloc(cap)
        if buf == NULL:
            return DS_ENOMEM
        free(out.data)
        out.data = buf
        out.cap = cap
    crc = 0
    if total:
        while not last:
            last = _piece(data, n, pad, ws.zeros, &pos, &p, &plen)
            crc = crc32_gzip_refl(crc, p, plen)
    out.crc = crc
    out.size = total
    out.input_len = n
    if total == 0 or level == 0:
        r = 0
    elif level <= 3:
        r = _deflate_isal(ws, data, n, pad, level, out.data, cap, &out.len)
    else:
        r = _deflate_zlib(ws, data, n, pad, level, out.data, cap, &out.len)
    if r < 0:
        return r
    if r == 0:
        write_stored(data, n, pad, out.data, &out.len)
    return DS_OK


cdef object body_to_py(const ds_body *body):
    """A :class:`Body` holding a copy of ``body``."""
    cdef Body b = Body.__new__(Body)
    b.data = PyBytes_FromStringAndSize(<char *>body.data, body.len)
    b.crc32 = body.crc
    b.size = body.size
    b.input_len = body.input_len
    return b


cdef class _Deflater:
    """Per-thread engine state for :func:`deflate_body` (see ``_tls``)."""

    cdef ds_deflater ws

    def __cinit__(self):
        if deflater_init(&self.ws) != DS_OK:
            raise MemoryError("deflate_body: cannot allocate engine state")

    def __dealloc__(self):
        deflater_free(&self.ws)


_tls = threading.local()


def deflate_body(const unsigned char[::1] data, int level, size_t pad_to=512) -> Body:
    """Compress ``data || zero padding to a multiple of pad_to`` as raw deflate blocks."""
    cdef _Deflater d
    cdef size_t n = data.shape[0]
    cdef const unsigned char *p = &data[0] if n else NULL
    cdef int r
    if level < 0 or level > 9:
        raise ValueError(f"compression level must be 0..9, got {level}")
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
        raise RuntimeError(f"deflate_body: {ds_strerror(r).decode()} (level {level}, {n} bytes)")
    body = body_to_py(&d.ws.scratch)
    if d.ws.scratch.cap > (<size_t>64 << 20):
        body_free(&d.ws.scratch)  # keep at most 64 MiB of scratch per thread
    return body


# ----------------------------------------------------------------------------- tar headers


cdef bytes _octal(uint64_t value, int digits, str field):
    s = format(value, "o")
    if len(s) > digits:
        raise ValueError(f"tar {field} {value} does not fit in {digits} octal digits")
    return s.rjust(digits, "0").encode("ascii") + b"\0"


def tar_header(bytes name, uint64_t size, uint64_t mtime) -> bytes:
    """The 512-byte ustar header of docs/FORMAT.md §2.3 for a regular file entry."""
    if not name or len(name) > 100 or b"\0" in name:
        raise ValueError(f"tar name must be 1..100 bytes without NUL, got {name!r}")
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = _octal(size, 11, "size")
    h[136:148] = _octal(mtime, 11, "mtime")
    h[148:156] = b"        "
    h[156] = 0x30
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[265:273] = b"dsbackup"
    h[297:305] = b"dsbackup"
    h[329:337] = b"0000000\0"
    h[337:345] = b"0000000\0"
    h[148:156] = format(sum(h), "06o").encode("ascii") + b"\0 "
    return bytes(h)


cdef uint64_t _parse_octal(const unsigned char[::1] h, int off, int digits, str field) except? 0:
    cdef uint64_t v = 0
    cdef int i
    cdef unsigned char c
    for i in range(digits):
        c = h[off + i]
        if c < 0x30 or c > 0x37:
            raise MemberError(f"tar header: {field} field is not {digits} octal digits "
                              f"(byte {off + i} is {c:#04x})")
        v = v * 8 + (c - 0x30)
    if h[off + digits] != 0:
        raise MemberError(f"tar header: {field} field is not NUL-terminated")
    return v


def parse_tar_header(const unsigned char[::1] header) -> tuple:
    """Validate a header written by :func:`tar_header`; return ``(name, size, mtime)``."""
    cdef uint64_t chk, stored, size, mtime
    cdef int i
    if header.shape[0] != 512:
        raise MemberError(f"tar header must be 512 bytes, got {header.shape[0]}")
    h = bytes(header)
    if h[257:263] != b"ustar\0":
        raise MemberError(f"tar header: bad magic {h[257:263]!r} (expected b'ustar\\x00')")
    if h[263:265] != b"00":
        raise MemberError(f"tar header: bad version {h[263:265]!r} (expected b'00')")
    if h[156] != 0x30:
        raise MemberError(f"tar header: typeflag {chr(h[156])!r} is not a regular file ('0')")
    stored = _parse_octal(header, 148, 6, "chksum")
    if h[155] != 0x20:
        raise MemberError("tar header: chksum field does not end with NUL and space")
    chk = 0
    for i in range(512):
        chk += 0x20 if 148 <= i < 156 else header[i]
    if chk != stored:
        raise MemberError(f"tar header: checksum {stored:o} does not match computed {chk:o}")
    size = _parse_octal(header, 124, 11, "size")
    mtime = _parse_octal(header, 136, 11, "mtime")
    if any(h[345:500]):
        raise MemberError("tar header: prefix field is not empty")
    end = h.find(b"\0", 0, 100)
    name = h[:100] if end < 0 else h[:end]
    if not name or (end >= 0 and any(h[end:100])):
        raise MemberError(f"tar header: invalid name field {h[:100]!r}")
    return name, size, mtime


# ----------------------------------------------------------------------------- inflate


cdef enum:
    INF_DONE = 1
    INF_FULL = 0
    INF_TRUNCATED = 2
    INF_STALLED = 3


cdef int _inflate_run(inflate_state *st, const unsigned char *inp, size_t in_len, size_t *in_pos,
                      unsigned char *out, size_t out_cap, size_t *out_pos) noexcept nogil:
    """Inflate until finished, ``out`` is full, input is exhausted, or an ISA-L error (<0)."""
    cdef size_t step, feed, before_in, before_out
    cdef int ret, idle = 0
    while True:
        if st.avail_in == 0 and in_pos[0] < in_len:
            feed = in_len - in_pos[0]
            if feed > MAX_STEP:
                feed = MAX_STEP
            st.next_in = <uint8_t *>(inp + in_pos[0])
            st.avail_in = <uint32_t>feed
            in_pos[0] += feed
        step = out_cap - out_pos[0]
        if step > MAX_STEP:
            step = MAX_STEP
        st.next_out = out + out_pos[0]
        st.avail_out = <uint32_t>step
        before_in = st.avail_in
        ret = isal_inflate(st)
        out_pos[0] += step - st.avail_out
        if ret < 0:
            return ret
        if ret == ISAL_NEED_DICT:
            return -100
        if st.block_state == ISAL_BLOCK_FINISH:
            return INF_DONE
        if out_pos[0] == out_cap:
            return INF_FULL
        if st.avail_in == 0 and in_pos[0] == in_len:
            return INF_TRUNCATED
        if st.avail_in == before_in and st.avail_out == step:
            idle += 1
            if idle > 2:
                return INF_STALLED
        else:
            idle = 0


cdef size_t _consumed(inflate_state *st, size_t in_pos) noexcept nogil:
    return in_pos - st.avail_in - <size_t>(st.read_in_length // 8)


cdef object _inflate_error(int code, size_t in_pos, size_t in_len, size_t out_pos):
    if code == INF_TRUNCATED:
        return MemberError(f"deflate stream truncated: input ended after {in_len} bytes "
                           f"({out_pos} bytes inflated) before the final block")
    if code == INF_STALLED:
        return MemberError(f"deflate stream makes no progress near input byte {in_pos}")
    names = {-1: "invalid block", -2: "invalid symbol", -3: "invalid distance", -100: "needs a dictionary"}
    return MemberError(f"invalid deflate data ({names.get(code, code)}) near input byte "
                       f"{in_pos} after {out_pos} bytes of output")


cdef int _probe_more(inflate_state *st, const unsigned char *inp, size_t in_len,
                     size_t *in_pos) noexcept nogil:
    """The output buffer is full: 1 if the stream yields more bytes, else the end state."""
    cdef unsigned char scratch[1]
    cdef size_t pos = 0
    cdef int r = _inflate_run(st, inp, in_len, in_pos, scratch, 1, &pos)
    if pos:
        return -200
    return r


cdef inline inflate_state *_new_inflate_state() noexcept nogil:
    cdef inflate_state *st = <inflate_state *>malloc(sizeof(inflate_state))
    if st != NULL:
        isal_inflate_init(st)
        st.crc_flag = ISAL_DEFLATE
        st.hist_bits = 0
    return st


def inflate_raw(const unsigned char[::1] buf, size_t max_output, expected_output=None) -> tuple:
    """Inflate one raw deflate stream at ``buf[0]``; return ``(output, consumed_bytes)``.

    Never allocates more than ``max_output`` bytes of output; raises MemberError if the stream
    would produce more, is truncated or invalid, or its length differs from ``expected_output``.
    """
    cdef size_t in_len = buf.shape[0], in_pos = 0, out_pos = 0, cap, limit, expected = 0
    cdef const unsigned char *inp = &buf[0] if in_len else NULL
    cdef inflate_state *st
    cdef bytes out
    cdef unsigned char *op
    cdef int r
    cdef bint has_expected = expected_output is not None
    if has_expected:
        expected = expected_output
        if expected > max_output:
            raise MemberError(f"declared size {expected} exceeds the limit {max_output}")
        limit = expected
        cap = expected
    else:
        limit = max_output
        cap = in_len * 4 if in_len < (<size_t>1 << 60) else limit
        if cap < 65536:
            cap = 65536
        if cap > limit:
            cap = limit
    st = _new_inflate_state()
    if st == NULL:
        raise MemoryError("inflate_raw: cannot allocate inflate state")
    try:
        out = PyBytes_FromStringAndSize(NULL, cap)
        while True:
            op = <unsigned char *>PyBytes_AS_STRING(out)
            with nogil:
                r = _inflate_run(st, inp, in_len, &in_pos, op, cap, &out_pos)
                if r == INF_FULL and cap == limit:
                    r = _probe_more(st, inp, in_len, &in_pos)
            if r == INF_FULL:
                cap = cap * 2 if cap < limit // 2 else limit
                out = out[:out_pos] + PyBytes_FromStringAndSize(NULL, cap - out_pos)
                continue
            if r == -200:
                if has_expected:
                    raise MemberError(f"deflate stream inflates to more than the declared "
                                      f"{expected} bytes")
                raise MemberError(f"deflate stream inflates to more than {max_output} bytes")
            if r != INF_DONE:
                raise _inflate_error(r, in_pos, in_len, out_pos)
            break
        if has_expected and out_pos != expected:
            raise MemberError(f"deflate stream inflates to {out_pos} bytes, declared {expected}")
        consumed = _consumed(st, in_pos)
    finally:
        free(st)
    if out_pos != cap:
        out = out[:out_pos]
    return out, consumed


def inflate_raw_into(const unsigned char[::1] buf, unsigned char[::1] out) -> tuple:
    """Inflate one raw deflate stream at ``buf[0]`` into ``out``; return ``(written, consumed)``.

    Raises MemberError if the stream would produce more than ``len(out)`` bytes, or is
    truncated or invalid.
    """
    cdef size_t in_len = buf.shape[0], in_pos = 0, out_pos = 0, cap = out.shape[0]
    cdef const unsigned char *inp = &buf[0] if in_len else NULL
    cdef unsigned char dummy[1]
    cdef unsigned char *op = &out[0] if cap else dummy
    cdef inflate_state *st = _new_inflate_state()
    cdef int r
    if st == NULL:
        raise MemoryError("inflate_raw_into: cannot allocate inflate state")
    try:
        with nogil:
            r = _inflate_run(st, inp, in_len, &in_pos, op, cap, &out_pos)
            if r == INF_FULL:
                r = _probe_more(st, inp, in_len, &in_pos)
        if r == -200:
            raise MemberError(f"deflate stream inflates to more than the {cap}-byte buffer")
        if r != INF_DONE:
            raise _inflate_error(r, in_pos, in_len, out_pos)
        return out_pos, _consumed(st, in_pos)
    finally:
        free(st)


# ----------------------------------------------------------------------------- C API


cdef ds_compress_api _api
_api.deflate_body = deflate_body_c
_api.deflater_init = deflater_init
_api.deflater_free = deflater_free
_api.body_free = body_free
_api.body_to_py = body_to_py
_api.strerror = ds_strerror
_C_API = PyCapsule_New(&_api, "dsbackup._ext.compress._C_API", NULL)
