# Bounded raw inflate with ISA-L (included by compress.pyx).

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
    return MemberError(f"invalid deflate data ({names.get(code, 'error')}, ISA-L isal_inflate "
                       f"returned {code}) near input byte "
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


cdef class _Inflater:
    """A thread's reused inflate state (see inflate_raw_into): one allocation per thread, not
    one per call."""

    cdef inflate_state *st

    def __cinit__(self):
        self.st = _new_inflate_state()
        if self.st == NULL:
            raise MemoryError("inflate_raw_into: cannot allocate inflate state")

    def __dealloc__(self):
        free(self.st)

    def __reduce__(self):
        raise TypeError("inflate state cannot be pickled")


def inflate_raw_into(const unsigned char[::1] buf, unsigned char[::1] out,
                     expected_output=None) -> tuple:
    """Inflate one raw deflate stream at ``buf[0]`` into ``out``; return ``(written, consumed)``.

    Raises MemberError if the stream would produce more than ``len(out)`` bytes, or is
    truncated or invalid. With ``expected_output`` (at most ``len(out)``), a stream of another
    length is an error too, with inflate_raw's messages: a caller inflating into a reused
    buffer checks exactly what inflate_raw checks. The inflate state is the calling thread's,
    reused.
    """
    cdef size_t in_len = buf.shape[0], in_pos = 0, out_pos = 0, cap = out.shape[0]
    cdef size_t expected = 0
    cdef const unsigned char *inp = &buf[0] if in_len else NULL
    cdef unsigned char dummy[1]
    cdef unsigned char *op = &out[0] if cap else dummy
    cdef _Inflater holder
    cdef inflate_state *st
    cdef int r
    cdef bint has_expected = expected_output is not None
    if has_expected:
        expected = expected_output
        if expected > cap:
            raise MemberError(f"declared size {expected} exceeds the {cap}-byte buffer")
        cap = expected
    holder = getattr(_tls, "inflater", None)
    if holder is None:
        holder = _Inflater()
        _tls.inflater = holder
    st = holder.st
    isal_inflate_init(st)
    st.crc_flag = ISAL_DEFLATE
    st.hist_bits = 0
    with nogil:
        r = _inflate_run(st, inp, in_len, &in_pos, op, cap, &out_pos)
        if r == INF_FULL:
            r = _probe_more(st, inp, in_len, &in_pos)
    if r == -200:
        if has_expected:
            raise MemberError(f"deflate stream inflates to more than the declared "
                              f"{expected} bytes")
        raise MemberError(f"deflate stream inflates to more than the {cap}-byte buffer")
    if r != INF_DONE:
        raise _inflate_error(r, in_pos, in_len, out_pos)
    if has_expected and out_pos != expected:
        raise MemberError(f"deflate stream inflates to {out_pos} bytes, declared {expected}")
    return out_pos, _consumed(st, in_pos)
