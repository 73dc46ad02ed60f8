"""AES-256-GCM for encrypted archives (docs/FORMAT.md §11.4), one native pass per member.

``seal_stored`` encrypts a member's data (OpenSSL EVP) straight into the stored deflate
blocks it is written in, and computes on each 64 KiB block while it is in cache the CRC-32
of ``stored || padding`` and the XXH3-64 of ``stored`` (= ciphertext || tag): what took an
AES-GCM pass, a stored-block copy with its CRC and an XXH3 pass over every byte before.
``open_stored`` checks the tag and decrypts. Both release the GIL. ``frame_into`` is the same
pass without the encryption, for a ciphertext `cryptography` wrote into the stored blocks
already (the encrypted writer's chunks and catalogs, ``ArchiveCipher.encrypt_stored``). Output
is the same as
``cryptography``'s AESGCM (a test compares them); AES-GCM itself is OpenSSL's, nothing here
is a cryptographic primitive.

The data key lives in one private anonymous page marked MADV_DONTDUMP (left out of core
files) and MADV_WIPEONFORK (a forked child sees zeros), cleansed when the key object goes.
OpenSSL holds the expanded key only for the duration of one call (its context is freed,
and cleansed by OpenSSL, before the call returns).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.mman cimport (
    MADV_DONTDUMP,
    MADV_WIPEONFORK,
    MAP_ANONYMOUS,
    MAP_FAILED,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    madvise,
    mmap,
    munmap,
)

from libcrypto cimport (
    EVP_CIPHER_CTX,
    EVP_CIPHER_CTX_ctrl,
    EVP_CIPHER_CTX_free,
    EVP_CIPHER_CTX_new,
    EVP_CTRL_GCM_GET_TAG,
    EVP_CTRL_GCM_SET_TAG,
    EVP_DecryptFinal_ex,
    EVP_DecryptInit_ex,
    EVP_DecryptUpdate,
    EVP_EncryptFinal_ex,
    EVP_EncryptInit_ex,
    EVP_EncryptUpdate,
    ERR_clear_error,
    ERR_error_string_n,
    ERR_get_error,
    EVP_aes_256_gcm,
    OPENSSL_cleanse,
)
from libisal cimport crc32_gzip_refl
from libxxhash cimport (
    XXH3_64bits_digest,
    XXH3_64bits_reset,
    XXH3_64bits_update,
    XXH3_createState,
    XXH3_freeState,
    XXH3_state_t,
)

from dsbackup._ext.compress import Body
from dsbackup.errors import ArchiveError

cdef enum:
    KEY_BYTES = 32
    NONCE_BYTES = 12
    TAG_BYTES = 16
    STORED_MAX = 65535          # bytes of data per stored deflate block
    PIECE = 1 << 30             # EVP takes int lengths: longer inputs go in pieces
    KEY_PAGE = 4096

    # results of the nogil parts
    OK = 0
    E_NOMEM = -1
    E_SSL = -2
    E_TAG = -3

TAG_LENGTH = TAG_BYTES


class SealError(ArchiveError, RuntimeError):
    """OpenSSL refused an operation (not a wrong tag: open_stored returns None for that); the
    message keeps OpenSSL's error code and text. Exit code 2 (dsbackup.errors.ArchiveError)."""
    description = "encryption library (OpenSSL) failed"


cdef str _openssl_error():
    """OpenSSL's first queued error as "(OpenSSL error 0x..: text)", the queue cleared."""
    cdef unsigned long e = ERR_get_error()
    cdef char buf[256]
    ERR_clear_error()
    if e == 0:
        return "(no OpenSSL error queued)"
    ERR_error_string_n(e, buf, sizeof(buf))
    return f"(OpenSSL error {e:#x}: {buf.decode('ascii', 'replace')})"


cdef class GcmKey:
    """An AES-256 key for seal_stored / open_stored. Never printed, never pickled."""

    cdef unsigned char *key     # KEY_BYTES in a private page (see the module docstring)

    def __cinit__(self, const unsigned char[::1] key not None):
        cdef void *page
        if key.shape[0] != KEY_BYTES:
            raise ValueError(f"an AES-256 key has {KEY_BYTES} bytes")
        page = mmap(NULL, KEY_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if page == MAP_FAILED:
            raise MemoryError("GcmKey: cannot map a page for the key")
        madvise(page, KEY_PAGE, MADV_DONTDUMP)     # best effort: an old kernel may refuse
        madvise(page, KEY_PAGE, MADV_WIPEONFORK)
        self.key = <unsigned char *>page
        memcpy(self.key, &key[0], KEY_BYTES)

    def __dealloc__(self):
        if self.key != NULL:
            OPENSSL_cleanse(self.key, KEY_BYTES)
            munmap(self.key, KEY_PAGE)
            self.key = NULL

    def __repr__(self) -> str:
        return "<GcmKey>"

    def __reduce__(self):
        raise TypeError("a key cannot be pickled")


cdef inline size_t _padded(size_t n, size_t pad_to) noexcept nogil:
    if pad_to > 1 and n % pad_to:
        return n + pad_to - n % pad_to
    return n


cdef EVP_CIPHER_CTX *_context(const unsigned char *key, const unsigned char *nonce,
                              const unsigned char *aad, size_t aad_len,
                              bint encrypt) noexcept nogil:
    """A context keyed and with the nonce and associated data fed; NULL on failure."""
    cdef EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new()
    cdef int outl = 0, ok
    if ctx == NULL:
        return NULL
    if encrypt:
        ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce)
        if ok == 1 and aad_len:
            ok = EVP_EncryptUpdate(ctx, NULL, &outl, aad, <int>aad_len)
    else:
        ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce)
        if ok == 1 and aad_len:
            ok = EVP_DecryptUpdate(ctx, NULL, &outl, aad, <int>aad_len)
    if ok != 1:
        EVP_CIPHER_CTX_free(ctx)
        return NULL
    return ctx


cdef int _seal_c(const unsigned char *key, const unsigned char *nonce,
                 const unsigned char *aad, size_t aad_len, const unsigned char *data, size_t n,
                 size_t total, unsigned char *out, uint32_t *crc_out,
                 uint64_t *xxh_out, const unsigned char *given_tag=NULL) noexcept nogil:
    """Stored blocks of ``ciphertext || tag || zeros`` (``total`` bytes) into ``out``, block
    after block: encrypt into the block, append the tag once the ciphertext ends, pad, then
    CRC and XXH3 the block while it is in cache. With ``given_tag``, the ciphertext of n
    bytes is already in the blocks' data (another AES-GCM engine wrote it there, see
    ``frame_into``) and ``given_tag`` is its tag: only the framing, tag, padding and
    checksums are done (``key``, ``nonce``, ``aad`` and ``data`` are not used)."""
    cdef size_t slen = n + TAG_BYTES, off = 0, o = 0, blk, end, a, b
    cdef unsigned char tag[TAG_BYTES]
    cdef bint finished = False
    cdef int outl = 0, r = OK
    cdef uint32_t crc = 0
    cdef unsigned char *p
    cdef XXH3_state_t *st = XXH3_createState()
    cdef EVP_CIPHER_CTX *ctx = NULL
    if st == NULL:
        return E_NOMEM
    if given_tag != NULL:
        memcpy(tag, given_tag, TAG_BYTES)
    else:
        ctx = _context(key, nonce, aad, aad_len, True)
        if ctx == NULL:
            XXH3_freeState(st)
            return E_SSL
    XXH3_64bits_reset(st)
    while off < total:
        blk = total - off
        if blk > STORED_MAX:
            blk = STORED_MAX
        end = off + blk
        out[o] = 1 if end == total else 0
        out[o + 1] = blk & 0xff
        out[o + 2] = (blk >> 8) & 0xff
        out[o + 3] = (~blk) & 0xff
        out[o + 4] = ((~blk) >> 8) & 0xff
        p = out + o + 5
        if off < n and ctx != NULL:               # ciphertext
            a = (n if n < end else end) - off
            if EVP_EncryptUpdate(ctx, p, &outl, data + off, <int>a) != 1 or <size_t>outl != a:
                r = E_SSL
                break
        if not finished and end >= n:             # the ciphertext ends in this block
            if ctx != NULL and (EVP_EncryptFinal_ex(ctx, tag, &outl) != 1
                    or EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, tag) != 1):
                r = E_SSL
                break
            finished = True
        if finished and end > n and off < slen:   # (part of) the tag
            a = n if n > off else off
            b = slen if slen < end else end
            memcpy(p + (a - off), tag + (a - n), b - a)
        if end > slen:                            # padding
            a = slen if slen > off else off
            memset(p + (a - off), 0, end - a)
        crc = crc32_gzip_refl(crc, p, blk)
        if off < slen:
            XXH3_64bits_update(st, p, (slen if slen < end else end) - off)
        o += 5 + blk
        off = end
    if r == OK:
        crc_out[0] = crc
        xxh_out[0] = XXH3_64bits_digest(st)
    if ctx != NULL:
        EVP_CIPHER_CTX_free(ctx)
    OPENSSL_cleanse(tag, TAG_BYTES)
    XXH3_freeState(st)
    return r


cdef int _open_c(const unsigned char *key, const unsigned char *nonce,
                 const unsigned char *aad, size_t aad_len, const unsigned char *stored,
                 size_t n, unsigned char *out) noexcept nogil:
    """Decrypt ``stored`` (ciphertext of n bytes, then the tag) into ``out``; E_TAG when the
    tag does not match."""
    cdef EVP_CIPHER_CTX *ctx = _context(key, nonce, aad, aad_len, False)
    cdef size_t off = 0, a
    cdef int outl = 0, r = OK
    cdef unsigned char tag[TAG_BYTES]
    cdef unsigned char last[16]
    if ctx == NULL:
        return E_SSL
    memcpy(tag, stored + n, TAG_BYTES)
    while off < n:
        a = n - off if n - off < PIECE else PIECE
        if EVP_DecryptUpdate(ctx, out + off, &outl, stored + off, <int>a) != 1 \
                or <size_t>outl != a:
            r = E_SSL
            break
        off += a
    if r == OK:
        if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) != 1:
            r = E_SSL
        elif EVP_DecryptFinal_ex(ctx, last, &outl) != 1:
            r = E_TAG
    EVP_CIPHER_CTX_free(ctx)
    return r


cdef void _check_nonce(const unsigned char[::1] nonce) except *:
    if nonce.shape[0] != NONCE_BYTES:
        raise ValueError(f"a nonce has {NONCE_BYTES} bytes")


cdef size_t _sealed_total(size_t n, size_t pad_to) except? 0:
    """The padded length of ``ciphertext || tag`` for n bytes of data."""
    if pad_to == 0:
        raise ValueError("pad_to must be >= 1")
    return _padded(n + TAG_BYTES, pad_to)


cdef inline size_t _stored_size(size_t total) noexcept:
    """Bytes of the stored deflate blocks (a 5-byte header each) holding ``total`` bytes."""
    return total + 5 * ((total + STORED_MAX - 1) // STORED_MAX)


cdef tuple _seal_to(GcmKey key, const unsigned char[::1] nonce,
                    const unsigned char[::1] aad, const unsigned char[::1] data,
                    size_t total, unsigned char *op):
    """Seal ``data`` as the stored blocks of ``total`` padded bytes into ``op`` (GIL
    released); (crc32, xxh3)."""
    cdef size_t n = data.shape[0], aad_len = aad.shape[0]
    cdef const unsigned char *dp = &data[0] if n else NULL
    cdef const unsigned char *ap = &aad[0] if aad_len else NULL
    cdef uint32_t crc = 0
    cdef uint64_t xxh = 0
    cdef int r
    _check_nonce(nonce)
    if aad_len > PIECE:
        raise ValueError("associated data too long")
    with nogil:
        r = _seal_c(key.key, &nonce[0], ap, aad_len, dp, n, total, op, &crc, &xxh)
    if r == E_NOMEM:
        raise MemoryError("sealing: out of memory")
    if r != OK:
        raise SealError(f"OpenSSL could not encrypt {n} bytes (AES-256-GCM) {_openssl_error()}")
    return crc, xxh


def seal_stored(GcmKey key not None, const unsigned char[::1] nonce not None,
                const unsigned char[::1] aad not None, const unsigned char[::1] data not None,
                size_t pad_to=512):
    """(Body, xxh3): ``data`` sealed (ciphertext || tag, its length ``body.input_len``) and
    zero-padded to a multiple of ``pad_to``, as stored deflate blocks of at most 65535 bytes
    (``deflate_body(sealed, 0, pad_to)`` gives the same Body); ``xxh3`` is the XXH3-64 of
    the sealed bytes."""
    cdef size_t total = _sealed_total(data.shape[0], pad_to)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _stored_size(total))
    crc, xxh = _seal_to(key, nonce, aad, data, total, <unsigned char *>PyBytes_AS_STRING(out))
    return Body(out, crc, total, data.shape[0] + TAG_BYTES), xxh


def sealed_size(size_t n, size_t pad_to=512) -> int:
    """The bytes ``seal_into`` writes for ``n`` bytes of data: the stored deflate blocks of
    ``ciphertext || tag`` zero-padded to a multiple of ``pad_to``."""
    return _stored_size(_sealed_total(n, pad_to))


def seal_into(GcmKey key not None, const unsigned char[::1] nonce not None,
              const unsigned char[::1] aad not None, const unsigned char[::1] data not None,
              unsigned char[::1] out not None, size_t pad_to=512):
    """``seal_stored`` into the start of a caller's buffer (reused from member to member, so
    no fresh pages are faulted in per member): (written, crc32, size, input_len, xxh3), as
    ``seal_stored``'s Body fields and digest; the sealed member body is ``out[:written]``.
    ValueError when ``out`` is shorter than ``sealed_size(len(data), pad_to)``."""
    cdef size_t total = _sealed_total(data.shape[0], pad_to)
    cdef size_t need = _stored_size(total)
    if <size_t>out.shape[0] < need:
        raise ValueError(f"seal_into: the output buffer has {out.shape[0]} bytes, "
                         f"{need} are needed")
    crc, xxh = _seal_to(key, nonce, aad, data, total, &out[0])
    return need, crc, total, data.shape[0] + TAG_BYTES, xxh


def data_offsets(size_t n):
    """The (start, end) offsets in a sealed member body (``seal_into``'s layout) where the
    ciphertext of n bytes of data lies: one range per stored block it reaches, in order.
    Another AES-GCM engine writes the ciphertext there, then ``frame_into`` completes the
    body."""
    cdef size_t off = 0, o = 5, a
    out = []
    while off < n:
        a = n - off if n - off < STORED_MAX else STORED_MAX
        out.append((o, o + a))
        off += a
        o += 5 + STORED_MAX
    return out


def frame_into(const unsigned char[::1] tag not None, size_t n, unsigned char[::1] out not None,
               size_t pad_to=512):
    """Complete a sealed member body in ``out`` whose ciphertext (n bytes) is already at
    ``data_offsets(n)`` and whose GCM tag is ``tag``: the stored blocks' headers, the tag,
    the zero padding, the CRC-32 and the XXH3 (GIL released). Returns what ``seal_into``
    returns; the bytes are the same as ``seal_into`` writes for that ciphertext and tag.
    ValueError when ``out`` is shorter than ``sealed_size(n, pad_to)``."""
    cdef size_t total = _sealed_total(n, pad_to)
    cdef size_t need = _stored_size(total)
    cdef uint32_t crc = 0
    cdef uint64_t xxh = 0
    cdef int r
    if tag.shape[0] != TAG_BYTES:
        raise ValueError(f"a tag has {TAG_BYTES} bytes")
    if <size_t>out.shape[0] < need:
        raise ValueError(f"frame_into: the output buffer has {out.shape[0]} bytes, "
                         f"{need} are needed")
    with nogil:
        r = _seal_c(NULL, NULL, NULL, 0, NULL, n, total, &out[0], &crc, &xxh, &tag[0])
    if r == E_NOMEM:
        raise MemoryError("sealing: out of memory")
    return need, crc, total, n + TAG_BYTES, xxh


def open_stored(GcmKey key not None, const unsigned char[::1] nonce not None,
                const unsigned char[::1] aad not None, const unsigned char[::1] stored not None):
    """The plaintext of ``stored`` (ciphertext || tag), or None when the tag does not match
    (altered ciphertext, tag, nonce, associated data, or another key)."""
    cdef size_t n, aad_len = aad.shape[0]
    cdef const unsigned char *ap = &aad[0] if aad_len else NULL
    cdef int r
    cdef bytes out
    cdef unsigned char *op
    _check_nonce(nonce)
    if stored.shape[0] < TAG_BYTES:
        raise ValueError("sealed data shorter than its tag")
    if aad_len > PIECE:
        raise ValueError("associated data too long")
    n = stored.shape[0] - TAG_BYTES
    out = PyBytes_FromStringAndSize(NULL, n)
    op = <unsigned char *>PyBytes_AS_STRING(out)
    with nogil:
        r = _open_c(key.key, &nonce[0], ap, aad_len, &stored[0], n, op)
    if r == E_TAG:
        ERR_clear_error()
        return None
    if r != OK:
        raise SealError(f"OpenSSL could not decrypt {n} bytes (AES-256-GCM) {_openssl_error()}")
    return out
