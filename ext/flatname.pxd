# The flatfs name rule shared by the native listings (flatlist.pyx, flatspill.pyx): a file
# ``<shard>/<name>`` is in place when it ends in ``.data``, its name (less the extension)
# is non-empty, starts with the name prefix, holds only 0-9 A-Z + - _ = and maps to that
# shard (go-ds-flatfs's shard functions, short names padded with ``_``). Inline only.
from libc.string cimport memcmp

cdef enum:
    SHARD_PREFIX = 0
    SHARD_SUFFIX = 1
    SHARD_NEXT_TO_LAST = 2


cdef inline bint name_char_ok(unsigned char c) noexcept nogil:
    return (c'0' <= c <= c'9') or (c'A' <= c <= c'Z') or c == c'+' or c == c'-' \
        or c == c'_' or c == c'='


cdef inline bint in_place(const unsigned char *name, size_t nlen, const unsigned char *shard,
                          size_t slen, int kind, int param, const unsigned char *prefix,
                          size_t plen) noexcept nogil:
    """``<shard>/<name>`` is a ``.data`` file with a valid name in the shard it maps to."""
    cdef size_t L, i
    cdef long k
    cdef unsigned char c
    if nlen <= 5 or memcmp(name + nlen - 5, b".data", 5) != 0:
        return False
    L = nlen - 5
    if L < plen or (plen and memcmp(name, prefix, plen) != 0):
        return False
    for i in range(L):
        if not name_char_ok(name[i]):
            return False
    if slen != <size_t>param:
        return False
    for i in range(<size_t>param):
        if kind == SHARD_PREFIX:
            c = name[i] if i < L else c'_'
        elif kind == SHARD_SUFFIX:
            k = <long>L - param + <long>i
            c = name[k] if k >= 0 else c'_'
        else:  # next-to-last: ("_" * (n + 1) + name)[L : L + n]
            k = <long>L + <long>i - param - 1
            c = name[k] if k >= 0 else c'_'
        if c != shard[i]:
            return False
    return True
