# ustar headers of docs/FORMAT.md §2.3 (included by compress.pyx).

cdef inline void _put(char* h, int off, const char* s, int n) noexcept:
    memcpy(h + off, s, n)


cdef void _octal(char* out, uint64_t value, int digits, str field) except *:
    """`value` as `digits` zero-padded octal digits and a NUL at `out`."""
    if value >> (3 * digits):
        raise ValueError(f"tar {field} {value} does not fit in {digits} octal digits")
    cdef int i
    for i in range(digits - 1, -1, -1):
        out[i] = <char>(0x30 + (value & 7))
        value >>= 3
    out[digits] = 0


def tar_header(bytes name, uint64_t size, uint64_t mtime) -> bytes:
    """The 512-byte ustar header of docs/FORMAT.md §2.3 for a regular file entry."""
    cdef Py_ssize_t n = len(name)
    if not n or n > 100 or b"\0" in name:
        raise ValueError(f"tar name must be 1..100 bytes without NUL, got {name!r}")
    out = PyBytes_FromStringAndSize(NULL, 512)  # filled in place (it is not shared yet)
    cdef char* h = PyBytes_AS_STRING(out)
    memset(h, 0, 512)
    memcpy(h, PyBytes_AS_STRING(name), n)
    _put(h, 100, b"0000644\0", 8)
    _put(h, 108, b"0000000\0", 8)
    _put(h, 116, b"0000000\0", 8)
    _octal(h + 124, size, 11, "size")
    _octal(h + 136, mtime, 11, "mtime")
    _put(h, 148, b"        ", 8)
    h[156] = 0x30
    _put(h, 257, b"ustar\0", 6)
    _put(h, 263, b"00", 2)
    _put(h, 265, b"dsbackup", 8)
    _put(h, 297, b"dsbackup", 8)
    _put(h, 329, b"0000000\0", 8)
    _put(h, 337, b"0000000\0", 8)
    cdef uint64_t chk = 0
    cdef int i
    for i in range(512):
        chk += <unsigned char>h[i]
    _octal(h + 148, chk, 6, "checksum")  # six digits, NUL, then the space already there
    return out


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
