"""Whole-payload encode, decode and validation (docs/FORMAT.md §4), and FramingError.

A payload is ``"DSC1" | flags u32 = 0 | count u64`` then records
``op u8 = 0 | key_len uvarint | value_len uvarint | key | value`` in strictly increasing key
order. scan_c validates a payload completely (header, minimal varints, bounds, key lengths,
order, count, no trailing bytes) without creating Python objects; the decoders run it first and
then build objects from the validated payload. framing.pyx re-exports this module's names.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy, memset

from framing cimport FR_HEADER, FR_MAX_KEY, ds_keyhash
from frameutil cimport (
    key_cmp,
    keyhash_add,
    keyhash_digest_reset,
    keyhash_free,
    keyhash_new,
    put_u64le,
)
from uvarint cimport UV_OK, UV_TOO_LONG, UV_TRUNCATED, get_uvarint, put_uvarint, uvarint_len

from dsbackup.errors import IntegrityError


class FramingError(IntegrityError, ValueError):
    """A payload or record stream violates docs/FORMAT.md §4 (exit 3: damaged chunk data).

    ``record`` is the record (or input key) index at fault and ``offset`` the payload byte
    offset, when known. The backup side (keys a source gave out of order or of a bad length)
    re-raises it as BackupError naming the source.
    """

    description = "chunk payload violates the record format"

    def __init__(self, message: str, record: int | None = None, offset: int | None = None):
        super().__init__(message)
        self.record = record
        self.offset = offset


cdef enum:
    SC_OK = 0
    SC_SHORT_HEADER = 1
    SC_MAGIC = 2
    SC_FLAGS = 3
    SC_TRUNC_VARINT = 4
    SC_LONG_VARINT = 5
    SC_NONMINIMAL = 6
    SC_OP = 7
    SC_KEYLEN = 8
    SC_TRUNC_KEY = 9
    SC_TRUNC_VALUE = 10
    SC_ORDER = 11
    SC_COUNT_HIGH = 12        # more records than the header count
    SC_COUNT_LOW = 13         # payload ends before the header count
    SC_ENOMEM = 14


ctypedef struct ds_scan:
    uint64_t count
    uint64_t raw_bytes
    uint64_t keys_xxh3
    size_t first_off
    size_t first_len
    size_t last_off
    size_t last_len
    int err
    uint64_t err_record
    size_t err_offset
    uint64_t err_value


cdef inline int _varint(const unsigned char *p, size_t n, size_t *pos,
                        uint64_t *out) noexcept nogil:
    """The length varint at p[pos] (uvarint.pxd); SC_OK or the SC_* error it is."""
    cdef int e = get_uvarint(p, n, pos, out)
    if e == UV_OK:
        return SC_OK
    if e == UV_TRUNCATED:
        return SC_TRUNC_VARINT
    return SC_LONG_VARINT if e == UV_TOO_LONG else SC_NONMINIMAL


cdef int scan_c(const unsigned char *p, size_t n, ds_scan *s, int want_hash) noexcept nogil:
    cdef size_t pos = FR_HEADER, start, koff, prev_off = 0, prev_len = 0
    cdef uint64_t declared, klen, vlen, rec = 0
    cdef ds_keyhash *kh = NULL
    cdef int e
    memset(s, 0, sizeof(ds_scan))
    if n < FR_HEADER:
        s.err = SC_SHORT_HEADER
        return s.err
    if memcmp(p, b"DSC1", 4) != 0:
        s.err = SC_MAGIC
        return s.err
    if p[4] or p[5] or p[6] or p[7]:
        s.err = SC_FLAGS
        s.err_offset = 4
        return s.err
    declared = 0
    for e in range(8):
        declared |= (<uint64_t>p[8 + e]) << (8 * e)
    if want_hash:
        kh = keyhash_new()
        if kh == NULL:
            s.err = SC_ENOMEM
            return s.err
    while pos < n:
        start = pos
        s.err_record = rec
        s.err_offset = start
        if rec >= declared:
            s.err = SC_COUNT_HIGH
            s.err_value = declared
            break
        if p[pos] != 0:
            s.err = SC_OP
            s.err_value = p[pos]
            break
        pos += 1
        e = _varint(p, n, &pos, &klen)
        if e == SC_OK:
            e = _varint(p, n, &pos, &vlen)
        if e != SC_OK:
            s.err = e
            s.err_offset = pos
            break
        if klen == 0 or klen > FR_MAX_KEY:
            s.err = SC_KEYLEN
            s.err_value = klen
            break
        if klen > n - pos:
            s.err = SC_TRUNC_KEY
            s.err_value = klen
            break
        koff = pos
        pos += klen
        if vlen > n - pos:
            s.err = SC_TRUNC_VALUE
            s.err_value = vlen
            break
        pos += vlen
        if rec > 0 and key_cmp(p + prev_off, prev_len, p + koff, klen) >= 0:
            s.err = SC_ORDER
            break
        if rec == 0:
            s.first_off = koff
            s.first_len = klen
        prev_off = koff
        prev_len = klen
        if kh != NULL:
            keyhash_add(kh, p + koff, klen)
        s.raw_bytes += klen + vlen
        rec += 1
    if s.err == SC_OK and rec != declared:
        s.err = SC_COUNT_LOW
        s.err_record = rec
        s.err_offset = n
        s.err_value = declared
    s.count = rec
    s.last_off = prev_off
    s.last_len = prev_len
    if kh != NULL:
        s.keys_xxh3 = keyhash_digest_reset(kh)
        keyhash_free(kh)
    return s.err


cdef object _scan_error(ds_scan *s):
    cdef int e = s.err
    where = f"record {s.err_record} at byte offset {s.err_offset}"
    if e == SC_ENOMEM:
        return MemoryError("scan_payload: cannot allocate the key digest state")
    if e == SC_SHORT_HEADER:
        msg = "payload is shorter than its 16-byte header"
        return FramingError(msg, None, 0)
    if e == SC_MAGIC:
        return FramingError("payload does not start with magic b'DSC1'", None, 0)
    if e == SC_FLAGS:
        return FramingError("payload header flags are not 0", None, 4)
    msgs = {
        SC_TRUNC_VARINT: "length varint runs past the end of the payload",
        SC_LONG_VARINT: "length varint is longer than 10 bytes or overflows 64 bits",
        SC_NONMINIMAL: "length varint is not minimally encoded",
        SC_OP: f"unknown op {s.err_value} (only 0 = put is defined)",
        SC_KEYLEN: f"key length {s.err_value} is outside 1..65535",
        SC_TRUNC_KEY: f"key of {s.err_value} bytes runs past the end of the payload",
        SC_TRUNC_VALUE: f"value of {s.err_value} bytes runs past the end of the payload",
        SC_ORDER: "key is not greater than the previous key",
        SC_COUNT_HIGH: f"data continues after the {s.err_value} records the header declares "
                       "(trailing bytes or wrong count)",
        SC_COUNT_LOW: f"payload ends after {s.err_record} records but the header declares "
                      f"{s.err_value}",
    }
    return FramingError(f"{where}: {msgs.get(e, f'error {e}')}", s.err_record, s.err_offset)


cdef ds_scan _scan_or_raise(const unsigned char[::1] payload, expect_count, int want_hash):
    cdef ds_scan s
    cdef size_t n = payload.shape[0]
    cdef const unsigned char *p = &payload[0] if n else NULL
    with nogil:
        scan_c(p, n, &s, want_hash)
    if s.err != SC_OK:
        raise _scan_error(&s)
    if expect_count is not None and s.count != expect_count:
        raise FramingError(f"payload holds {s.count} records, expected {expect_count}")
    return s


cdef class PayloadInfo:
    """Summary of a validated payload (see :func:`scan_payload`)."""

    cdef readonly uint64_t record_count
    cdef readonly bytes first_key
    cdef readonly bytes last_key
    cdef readonly uint64_t keys_xxh3
    cdef readonly uint64_t raw_bytes

    def __repr__(self) -> str:
        return (f"PayloadInfo(record_count={self.record_count}, first_key={self.first_key!r}, "
                f"last_key={self.last_key!r}, keys_xxh3={self.keys_xxh3:#x}, "
                f"raw_bytes={self.raw_bytes})")


def scan_payload(const unsigned char[::1] payload) -> PayloadInfo:
    """Validate a whole payload without building per-record objects."""
    cdef ds_scan s = _scan_or_raise(payload, None, 1)
    cdef PayloadInfo info = PayloadInfo.__new__(PayloadInfo)
    cdef const char *p = <const char *>&payload[0]
    info.record_count = s.count
    info.first_key = PyBytes_FromStringAndSize(p + s.first_off, s.first_len)
    info.last_key = PyBytes_FromStringAndSize(p + s.last_off, s.last_len)
    info.keys_xxh3 = s.keys_xxh3
    info.raw_bytes = s.raw_bytes
    return info


cdef inline uint64_t _uv(const unsigned char *p, size_t *pos) noexcept nogil:
    # decode a varint already validated by scan_c
    cdef uint64_t v = 0
    cdef int k = 0
    cdef unsigned char b
    while True:
        b = p[pos[0]]
        pos[0] += 1
        v |= (<uint64_t>(b & 0x7f)) << (7 * k)
        k += 1
        if not (b & 0x80):
            return v


def decode_records(const unsigned char[::1] payload, expect_count=None) -> tuple:
    """Validate and decode a payload into ``(keys, values)``."""
    cdef ds_scan s = _scan_or_raise(payload, expect_count, 0)
    cdef const unsigned char *p = &payload[0]
    cdef size_t pos = FR_HEADER, klen, vlen
    cdef uint64_t i
    keys = [None] * <Py_ssize_t>s.count
    values = [None] * <Py_ssize_t>s.count
    for i in range(s.count):
        pos += 1
        klen = _uv(p, &pos)
        vlen = _uv(p, &pos)
        keys[i] = PyBytes_FromStringAndSize(<const char *>p + pos, klen)
        values[i] = PyBytes_FromStringAndSize(<const char *>p + pos + klen, vlen)
        pos += klen + vlen
    return keys, values


def decode_keys_sizes(const unsigned char[::1] payload) -> tuple:
    """Validate a payload; return its keys and value lengths."""
    cdef ds_scan s = _scan_or_raise(payload, None, 0)
    cdef const unsigned char *p = &payload[0]
    cdef size_t pos = FR_HEADER, klen, vlen
    cdef uint64_t i
    keys = [None] * <Py_ssize_t>s.count
    sizes = [0] * <Py_ssize_t>s.count
    for i in range(s.count):
        pos += 1
        klen = _uv(p, &pos)
        vlen = _uv(p, &pos)
        keys[i] = PyBytes_FromStringAndSize(<const char *>p + pos, klen)
        sizes[i] = vlen
        pos += klen + vlen
    return keys, sizes


def encode_records(keys, values) -> bytes:
    """Encode sorted records as one payload (header included)."""
    cdef tuple kt = tuple(keys), vt = tuple(values)
    cdef Py_ssize_t n = len(kt), i
    cdef size_t total = FR_HEADER, klen, vlen, o
    cdef bytes out, k, v
    cdef unsigned char *p
    if len(vt) != n:
        raise ValueError(f"{n} keys but {len(vt)} values")
    prev = None
    for i in range(n):
        k = kt[i]
        v = vt[i]
        klen = len(k)
        if klen == 0 or klen > FR_MAX_KEY:
            raise FramingError(f"key {i} ({k!r}) has length {klen}; keys must be 1..65535 bytes", i)
        if prev is not None and not prev < k:
            raise FramingError(f"key {i} ({k!r}) is not greater than key {i - 1} ({prev!r})", i)
        prev = k
        total += 1 + uvarint_len(klen) + uvarint_len(len(v)) + klen + len(v)
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    memcpy(p, b"DSC1\0\0\0\0", 8)
    put_u64le(p + 8, n)
    o = FR_HEADER
    for i in range(n):
        k = <bytes>PyTuple_GET_ITEM(kt, i)
        v = <bytes>PyTuple_GET_ITEM(vt, i)
        klen = PyBytes_GET_SIZE(k)
        vlen = PyBytes_GET_SIZE(v)
        p[o] = 0
        o += 1
        o += put_uvarint(p + o, klen)
        o += put_uvarint(p + o, vlen)
        memcpy(p + o, PyBytes_AS_STRING(k), klen)
        o += klen
        if vlen:
            memcpy(p + o, PyBytes_AS_STRING(v), vlen)
        o += vlen
    return out
