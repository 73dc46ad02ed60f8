# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Go's ``json.Marshal(map[string][]byte)`` for a chunk of records, with the GIL released.

The output is byte for byte what Go's encoding/json writes for a map whose keys are the
given keys (which must be in bytewise order, as Go sorts map keys) and whose values are
non-nil ``[]byte``: ``{"key":"base64",...}``, no spaces; keys escaped as Go escapes strings
with HTML escaping on (``"`` and ``\\`` with a backslash; ``\\n``, ``\\r``, ``\\t``; other
bytes below 0x20 and ``<``, ``>``, ``&`` as ``\\u00XX`` with lower-case hex — Go 1.22+
writes ``\\b`` and ``\\f`` for 0x08 and 0x0C, older Go ``\\u0008``/``\\u000c``, which we
write; both decode the same —; U+2028 and U+2029 as ``\\u2028``/``\\u2029``; each byte of
invalid UTF-8 as ``\\ufffd``, as Go's ``utf8.DecodeRuneInString`` reads it); values as
standard base64 with padding. See docs/GOFORMAT.md.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef const char *_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
cdef const char *_HEX = b"0123456789abcdef"


cdef inline size_t _utf8_len(const uint8_t *s, size_t n) noexcept nogil:
    """Length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid (Go rules:
    no overlong forms, no surrogates, nothing above U+10FFFF)."""
    cdef uint8_t b0 = s[0], lo = 0x80, hi = 0xBF
    cdef size_t need
    if 0xC2 <= b0 <= 0xDF:
        need = 2
    elif 0xE0 <= b0 <= 0xEF:
        need = 3
        if b0 == 0xE0:
            lo = 0xA0
        elif b0 == 0xED:
            hi = 0x9F
    elif 0xF0 <= b0 <= 0xF4:
        need = 4
        if b0 == 0xF0:
            lo = 0x90
        elif b0 == 0xF4:
            hi = 0x8F
    else:
        return 0
    if n < need or not (lo <= s[1] <= hi):
        return 0
    for i in range(2, need):
        if not (0x80 <= s[i] <= 0xBF):
            return 0
    return need


cdef inline size_t _key(char *out, const uint8_t *s, size_t n) noexcept nogil:
    cdef size_t i = 0, o = 0, k
    cdef uint8_t b
    out[o] = b'"'
    o += 1
    while i < n:
        b = s[i]
        if b < 0x80:
            if b >= 0x20 and b != b'"' and b != b'\\' and b != b'<' and b != b'>' \
                    and b != b'&':
                out[o] = <char>b
                o += 1
            elif b == b'"' or b == b'\\':
                out[o] = b'\\'
                out[o + 1] = <char>b
                o += 2
            elif b == b'\n':
                out[o] = b'\\'
                out[o + 1] = b'n'
                o += 2
            elif b == b'\r':
                out[o] = b'\\'
                out[o + 1] = b'r'
                o += 2
            elif b == b'\t':
                out[o] = b'\\'
                out[o + 1] = b't'
                o += 2
            else:
                memcpy(out + o, b"\\u00", 4)
                out[o + 4] = _HEX[b >> 4]
                out[o + 5] = _HEX[b & 0xF]
                o += 6
            i += 1
            continue
        k = _utf8_len(s + i, n - i)
        if k == 0:
            memcpy(out + o, b"\\ufffd", 6)
            o += 6
            i += 1
        elif k == 3 and b == 0xE2 and s[i + 1] == 0x80 and (s[i + 2] == 0xA8
                                                             or s[i + 2] == 0xA9):
            memcpy(out + o, b"\\u202", 5)
            out[o + 5] = b'8' if s[i + 2] == 0xA8 else b'9'
            o += 6
            i += 3
        else:
            memcpy(out + o, s + i, k)
            o += k
            i += k
    out[o] = b'"'
    return o + 1


cdef inline size_t _b64(char *out, const uint8_t *s, size_t n) noexcept nogil:
    cdef size_t i = 0, o = 0
    cdef unsigned int v
    out[o] = b'"'
    o += 1
    while i + 3 <= n:
        v = (<unsigned int>s[i] << 16) | (<unsigned int>s[i + 1] << 8) | s[i + 2]
        out[o] = _B64[(v >> 18) & 63]
        out[o + 1] = _B64[(v >> 12) & 63]
        out[o + 2] = _B64[(v >> 6) & 63]
        out[o + 3] = _B64[v & 63]
        o += 4
        i += 3
    if n - i == 1:
        v = <unsigned int>s[i] << 16
        out[o] = _B64[(v >> 18) & 63]
        out[o + 1] = _B64[(v >> 12) & 63]
        out[o + 2] = b'='
        out[o + 3] = b'='
        o += 4
    elif n - i == 2:
        v = (<unsigned int>s[i] << 16) | (<unsigned int>s[i + 1] << 8)
        out[o] = _B64[(v >> 18) & 63]
        out[o + 1] = _B64[(v >> 12) & 63]
        out[o + 2] = _B64[(v >> 6) & 63]
        out[o + 3] = b'='
        o += 4
    out[o] = b'"'
    return o + 1


def go_chunk_json(keys, values) -> bytes:
    """The Go JSON of ``map[string][]byte`` holding ``keys[i] -> values[i]`` (bytes each;
    keys in strictly increasing bytewise order, as Go sorts them)."""
    cdef tuple ks = tuple(keys)
    cdef tuple vs = tuple(values)
    cdef Py_ssize_t n = len(ks), i
    cdef const uint8_t **kp
    cdef const uint8_t **vp
    cdef size_t *kl
    cdef size_t *vl
    cdef size_t bound = 2, o
    cdef char *out
    if len(vs) != n:
        raise ValueError("go_chunk_json: keys and values differ in length")
    kp = <const uint8_t **>malloc(sizeof(void *) * (n + 1))
    vp = <const uint8_t **>malloc(sizeof(void *) * (n + 1))
    kl = <size_t *>malloc(sizeof(size_t) * (n + 1))
    vl = <size_t *>malloc(sizeof(size_t) * (n + 1))
    out = NULL
    try:
        if kp == NULL or vp == NULL or kl == NULL or vl == NULL:
            raise MemoryError(f"go_chunk_json: no memory for {n} records")
        prev = None
        for i in range(n):
            k = ks[i]
            v = vs[i]
            if type(k) is not bytes or type(v) is not bytes:
                raise TypeError("go_chunk_json: keys and values must be bytes")
            if prev is not None and not (<bytes>prev < <bytes>k):
                raise ValueError(f"go_chunk_json: keys out of order at {k[:80]!r}")
            prev = k
            kp[i] = <const uint8_t *>PyBytes_AS_STRING(k)
            kl[i] = <size_t>PyBytes_GET_SIZE(k)
            vp[i] = <const uint8_t *>PyBytes_AS_STRING(v)
            vl[i] = <size_t>PyBytes_GET_SIZE(v)
            bound += 6 * kl[i] + 4 * ((vl[i] + 2) // 3) + 8
        out = <char *>malloc(bound)
        if out == NULL:
            raise MemoryError(f"go_chunk_json: cannot allocate {bound} bytes")
        with nogil:
            out[0] = b'{'
            o = 1
            for i in range(n):
                if i:
                    out[o] = b','
                    o += 1
                o += _key(out + o, kp[i], kl[i])
                out[o] = b':'
                o += 1
                o += _b64(out + o, vp[i], vl[i])
            out[o] = b'}'
            o += 1
        return PyBytes_FromStringAndSize(out, <Py_ssize_t>o)
    finally:
        free(kp)
        free(vp)
        free(kl)
        free(vl)
        free(out)
