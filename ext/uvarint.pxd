# The payload format's length varints (docs/FORMAT.md §4): unsigned LEB128, at most 10 bytes,
# fitting 64 bits, minimally encoded. Inline functions only (compiled into each module that
# cimports them): framing, payload and planner encode, payload and lmdbwrite decode.
from libc.stdint cimport uint64_t

cdef enum:
    UV_OK = 0
    UV_TRUNCATED = 1    # runs past the end of the buffer
    UV_TOO_LONG = 2     # longer than 10 bytes, or overflows 64 bits
    UV_NONMINIMAL = 3   # a trailing zero group


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


cdef inline int get_uvarint(const unsigned char *p, size_t n, size_t *pos,
                            uint64_t *out) noexcept nogil:
    """Decode the varint at p[pos] (p holds n bytes): UV_OK with ``pos`` advanced past it and
    ``out`` set, or one of the UV_ errors (``pos`` and ``out`` untouched)."""
    cdef uint64_t v = 0
    cdef size_t i = pos[0], k = 0
    cdef unsigned char b
    while True:
        if i >= n:
            return UV_TRUNCATED
        b = p[i]
        if k == 9 and b > 1:
            return UV_TOO_LONG
        v |= (<uint64_t>(b & 0x7f)) << (7 * k)
        i += 1
        k += 1
        if not (b & 0x80):
            if b == 0 and k > 1:
                return UV_NONMINIMAL
            pos[0] = i
            out[0] = v
            return UV_OK
