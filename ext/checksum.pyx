"""XXH3 (64/128-bit, one-shot and streaming) and gzip CRC-32, with the GIL released.

``crc32`` uses ISA-L's ``crc32_gzip_refl`` and equals ``zlib.crc32``; ``crc32_combine`` is
zlib's. ``xxh3_128`` digests are the canonical big-endian form (``XXH128_canonicalFromHash``).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.types cimport off_t
from posix.unistd cimport pread

from libisal cimport crc32_gzip_refl
from libxxhash cimport (
    XXH3_128bits,
    XXH3_128bits_digest,
    XXH3_128bits_reset,
    XXH3_128bits_update,
    XXH3_64bits_digest,
    XXH3_64bits_reset_withSeed,
    XXH3_64bits_update,
    XXH3_64bits_withSeed,
    XXH3_createState,
    XXH3_freeState,
    XXH3_state_t,
    XXH128_canonical_t,
    XXH128_canonicalFromHash,
    XXH128_hash_t,
)
from libz cimport crc32_combine as z_crc32_combine
from libz cimport z_off_t


cdef bytes _canonical128(XXH128_hash_t h):
    cdef XXH128_canonical_t c
    XXH128_canonicalFromHash(&c, h)
    return (<char *>c.digest)[:16]


def xxh3_64(const unsigned char[::1] data, uint64_t seed=0) -> int:
    """XXH3-64 of ``data`` (any contiguous buffer) with ``seed``."""
    cdef size_t n = data.shape[0]
    cdef const unsigned char *p = &data[0] if n else NULL
    cdef uint64_t h
    with nogil:
        h = XXH3_64bits_withSeed(p, n, seed)
    return h


cdef enum:
    FILE_PIECE = 256 * 1024  # bytes read per pread by xxh3_64_file


def xxh3_64_file(int fd, uint64_t offset, uint64_t length) -> int:
    """XXH3-64 (seed 0) of ``length`` bytes of the file open at ``fd`` from ``offset``, read
    in pieces into one native buffer: no Python object holds the data and the GIL is released.
    Raises OSError on a read error and EOFError when the file ends first."""
    cdef XXH3_state_t *st = XXH3_createState()
    cdef unsigned char *buf = <unsigned char *>malloc(FILE_PIECE)
    cdef uint64_t done = 0, h = 0
    cdef size_t want
    cdef ssize_t got = 0
    cdef int err = 0
    if st == NULL or buf == NULL:
        free(buf)
        XXH3_freeState(st)
        raise MemoryError("xxh3_64_file: out of memory")
    try:
        with nogil:
            XXH3_64bits_reset_withSeed(st, 0)
            while done < length:
                want = FILE_PIECE if length - done > FILE_PIECE else <size_t>(length - done)
                got = pread(fd, buf, want, <off_t>(offset + done))
                if got < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                if got == 0:
                    break
                XXH3_64bits_update(st, buf, <size_t>got)
                done += <uint64_t>got
            h = XXH3_64bits_digest(st)
    finally:
        free(buf)
        XXH3_freeState(st)
    if err:
        raise OSError(err, f"read of {length} bytes at offset {offset} failed")
    if done < length:
        raise EOFError(f"file ends {length - done} bytes short of offset {offset + length}")
    return h


def xxh3_128(const unsigned char[::1] data) -> bytes:
    """XXH3-128 of ``data`` as 16 canonical (big-endian) bytes."""
    cdef size_t n = data.shape[0]
    cdef const unsigned char *p = &data[0] if n else NULL
    cdef XXH128_hash_t h
    with nogil:
        h = XXH3_128bits(p, n)
    return _canonical128(h)


def crc32(const unsigned char[::1] data, uint32_t value=0) -> int:
    """Gzip CRC-32 of ``data`` continuing from ``value`` (same result as ``zlib.crc32``)."""
    cdef size_t n = data.shape[0]
    cdef const unsigned char *p = &data[0] if n else NULL
    cdef uint32_t c
    with nogil:
        c = crc32_gzip_refl(value, p, n)
    return c


def crc32_combine(uint32_t crc1, uint32_t crc2, uint64_t len2) -> int:
    """CRC-32 of ``A || B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib)."""
    return <uint32_t>z_crc32_combine(crc1, crc2, <z_off_t>len2)


cdef class Xxh3_64:
    """Streaming XXH3-64. ``update`` releases the GIL; not safe for concurrent use."""

    cdef XXH3_state_t *_state
    cdef uint64_t _seed

    def __cinit__(self, uint64_t seed=0):
        self._state = XXH3_createState()
        if self._state == NULL:
            raise MemoryError("xxh3_64: cannot allocate XXH3 state")
        self._seed = seed
        XXH3_64bits_reset_withSeed(self._state, seed)

    def __dealloc__(self):
        if self._state != NULL:
            XXH3_freeState(self._state)

    def update(self, const unsigned char[::1] data) -> None:
        cdef size_t n = data.shape[0]
        if n == 0:
            return
        with nogil:
            XXH3_64bits_update(self._state, &data[0], n)

    def intdigest(self) -> int:
        return XXH3_64bits_digest(self._state)

    def reset(self) -> None:
        XXH3_64bits_reset_withSeed(self._state, self._seed)


cdef class Xxh3_128:
    """Streaming XXH3-128 (seed 0); ``digest`` is canonical big-endian."""

    cdef XXH3_state_t *_state

    def __cinit__(self):
        self._state = XXH3_createState()
        if self._state == NULL:
            raise MemoryError("xxh3_128: cannot allocate XXH3 state")
        XXH3_128bits_reset(self._state)

    def __dealloc__(self):
        if self._state != NULL:
            XXH3_freeState(self._state)

    def update(self, const unsigned char[::1] data) -> None:
        cdef size_t n = data.shape[0]
        if n == 0:
            return
        with nogil:
            XXH3_128bits_update(self._state, &data[0], n)

    def digest(self) -> bytes:
        return _canonical128(XXH3_128bits_digest(self._state))

    def hexdigest(self) -> str:
        return self.digest().hex()

    def reset(self) -> None:
        XXH3_128bits_reset(self._state)


# A member of docs/FORMAT.md §2 whose deflate stream is the stored 512-byte tar header block
# followed by the body's own blocks: what archive.writer writes for every member.
cdef const char *_GZIP_HEAD = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
cdef const char *_STORED_TAR_PREFIX = b"\x00\x00\x02\xff\xfd"  # stored block, LEN=512


def stored_tar_member(const unsigned char[::1] subfield, const unsigned char[::1] header,
                      const unsigned char[::1] body, uint32_t body_crc, uint64_t body_size,
                      ) -> tuple:
    """``(head, tail, xxh3)`` of the member framing `body` (a deflate stream of `body_size`
    uncompressed bytes, CRC-32 `body_crc`) after the 512-byte tar `header`: head = gzip
    header with the ``DS`` `subfield`, then the header in a stored block; tail = CRC-32 and
    ISIZE of header + body; xxh3 = XXH3-64 of head + body + tail (the index's member hash).
    One call in place of a Python line per piece (one per chunk in a backup's parent)."""
    cdef Py_ssize_t ns = subfield.shape[0], nb = body.shape[0]
    if header.shape[0] != 512:
        raise ValueError("a tar header is 512 bytes")
    if ns > 65531:
        raise ValueError("subfield too long")
    cdef Py_ssize_t nh = 10 + 2 + 4 + ns + 5 + 512
    head = PyBytes_FromStringAndSize(NULL, nh)
    cdef unsigned char *h = <unsigned char *>PyBytes_AS_STRING(head)
    memcpy(h, _GZIP_HEAD, 10)
    h[10] = <unsigned char>((4 + ns) & 0xFF)
    h[11] = <unsigned char>((4 + ns) >> 8)
    h[12] = 0x44  # 'D'
    h[13] = 0x53  # 'S'
    h[14] = <unsigned char>(ns & 0xFF)
    h[15] = <unsigned char>(ns >> 8)
    if ns:
        memcpy(h + 16, &subfield[0], ns)
    memcpy(h + 16 + ns, _STORED_TAR_PREFIX, 5)
    memcpy(h + 16 + ns + 5, &header[0], 512)
    cdef uint32_t crc = <uint32_t>z_crc32_combine(crc32_gzip_refl(0, &header[0], 512), body_crc,
                                                  <z_off_t>body_size)
    cdef uint32_t isize = <uint32_t>((512 + body_size) & 0xFFFFFFFF)
    tail = PyBytes_FromStringAndSize(NULL, 8)
    cdef unsigned char *t = <unsigned char *>PyBytes_AS_STRING(tail)
    cdef int i
    for i in range(4):
        t[i] = <unsigned char>((crc >> (8 * i)) & 0xFF)
        t[4 + i] = <unsigned char>((isize >> (8 * i)) & 0xFF)
    cdef XXH3_state_t *st = XXH3_createState()
    if st == NULL:
        raise MemoryError("xxh3_64: cannot allocate XXH3 state")
    cdef uint64_t digest
    with nogil:
        XXH3_64bits_reset_withSeed(st, 0)
        XXH3_64bits_update(st, h, nh)
        if nb:
            XXH3_64bits_update(st, &body[0], nb)
        XXH3_64bits_update(st, t, 8)
        digest = XXH3_64bits_digest(st)
    XXH3_freeState(st)
    return head, tail, digest
