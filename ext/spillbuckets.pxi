# Included by flatspill.pyx (its cimports and enums apply): the bucket files of a large
# flatfs listing. A name set (records len:u8 | name in one arena, sorted through a pointer
# array), a partition of names into bucket files by split keys (64 KiB buffer a bucket,
# appended with O_APPEND, errno kept for the caller), and a block reader of a bucket file.

# -- a set of names: records len:u8 | name in one arena -------------------------------------

ctypedef struct nameset:
    unsigned char *arena
    size_t alen
    size_t acap
    size_t n


cdef int ns_add(nameset *s, const unsigned char *name, size_t nlen) noexcept nogil:
    cdef size_t need = s.alen + 1 + nlen, ncap
    cdef void *p
    if need > s.acap:
        ncap = s.acap * 2 if s.acap else (1 << 20)
        while ncap < need:
            ncap *= 2
        p = realloc(s.arena, ncap)
        if p == NULL:
            return -1
        s.arena = <unsigned char *>p
        s.acap = ncap
    s.arena[s.alen] = <unsigned char>nlen
    memcpy(s.arena + s.alen + 1, name, nlen)
    s.alen = need
    s.n += 1
    return 0


cdef void ns_free(nameset *s) noexcept nogil:
    free(s.arena)
    memset(s, 0, sizeof(nameset))


cdef int rec_cmp(const void *a, const void *b) noexcept nogil:
    cdef const unsigned char *x = (<const unsigned char **>a)[0]
    cdef const unsigned char *y = (<const unsigned char **>b)[0]
    return key_cmp(x + 1, x[0], y + 1, y[0])


cdef const unsigned char **ns_sorted(nameset *s) noexcept nogil:
    """Pointers to the set's records in name order (NULL: no memory)."""
    cdef const unsigned char **ptrs = <const unsigned char **>malloc(
        (s.n + 1) * sizeof(unsigned char *))
    cdef size_t i, pos = 0
    if ptrs == NULL:
        return NULL
    for i in range(s.n):
        ptrs[i] = s.arena + pos
        pos += 1 + s.arena[pos]
    qsort(ptrs, s.n, sizeof(unsigned char *), rec_cmp)
    return ptrs


# -- a partition of names into bucket files by split keys -----------------------------------

ctypedef struct partition:
    int dirfd
    char tag[64]
    int nb
    nameset splits                 # nb - 1 split names, increasing
    const unsigned char **split_at
    unsigned char **buf
    size_t *blen
    uint64_t *count
    int err                        # errno of the first failed write
    int err_bucket


cdef void part_free(partition *p) noexcept nogil:
    cdef int b
    if p.buf != NULL:
        for b in range(p.nb):
            free(p.buf[b])
    free(p.buf)
    free(p.blen)
    free(p.count)
    free(p.split_at)
    ns_free(&p.splits)
    p.buf = NULL
    p.blen = NULL
    p.count = NULL
    p.split_at = NULL


cdef int part_init(partition *p, int dirfd, const char *tag, const unsigned char **sorted_,
                   size_t m, int nb) noexcept nogil:
    """Up to ``nb`` buckets cut at quantiles of the ``m`` sorted names (never at the
    first, so each bucket holds fewer names than the sample's range)."""
    cdef int b
    cdef size_t j, last = 0
    cdef size_t pos = 0
    memset(p, 0, sizeof(partition))
    p.dirfd = dirfd
    snprintf(p.tag, sizeof(p.tag), "%s", tag)
    for b in range(1, nb):
        j = <size_t>b * m // <size_t>nb
        if j == 0 or j >= m or (last and j == last):
            continue
        last = j
        if ns_add(&p.splits, sorted_[j] + 1, sorted_[j][0]) < 0:
            return -1
    p.nb = <int>p.splits.n + 1
    p.split_at = <const unsigned char **>malloc(p.nb * sizeof(unsigned char *))
    p.buf = <unsigned char **>malloc(p.nb * sizeof(unsigned char *))
    p.blen = <size_t *>malloc(p.nb * sizeof(size_t))
    p.count = <uint64_t *>malloc(p.nb * sizeof(uint64_t))
    if p.split_at == NULL or p.buf == NULL or p.blen == NULL or p.count == NULL:
        return -1
    for b in range(p.nb):
        p.buf[b] = NULL
        p.blen[b] = 0
        p.count[b] = 0
    for b in range(p.nb - 1):
        p.split_at[b] = p.splits.arena + pos
        pos += 1 + p.splits.arena[pos]
    for b in range(p.nb):
        p.buf[b] = <unsigned char *>malloc(BUF_BYTES)
        if p.buf[b] == NULL:
            return -1
    return 0


cdef void bucket_name(const partition *p, int b, char *out, size_t size) noexcept nogil:
    snprintf(out, size, "%s%d", p.tag, b)


cdef int write_all(int fd, const unsigned char *data, size_t n) noexcept nogil:
    cdef long w
    while n:
        w = write(fd, data, n)
        if w < 0:
            if errno == EINTR:
                continue
            return -1
        data += w
        n -= <size_t>w
    return 0


cdef int part_flush(partition *p, int b) noexcept nogil:
    cdef char name[96]
    cdef int fd, e
    if p.blen[b] == 0:
        return 0
    bucket_name(p, b, name, sizeof(name))
    fd = openat(p.dirfd, name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
    if fd < 0:
        p.err = errno
        p.err_bucket = b
        return -1
    if write_all(fd, p.buf[b], p.blen[b]) < 0:
        e = errno
        close(fd)
        p.err = e
        p.err_bucket = b
        return -1
    if close(fd) != 0:
        p.err = errno
        p.err_bucket = b
        return -1
    p.blen[b] = 0
    return 0


cdef int part_add(partition *p, const unsigned char *name, size_t nlen) noexcept nogil:
    cdef int lo = 0, hi = p.nb - 1, mid, b
    cdef const unsigned char *s
    while lo < hi:  # the number of splits <= name
        mid = (lo + hi) >> 1
        s = p.split_at[mid]
        if key_cmp(s + 1, s[0], name, nlen) <= 0:
            lo = mid + 1
        else:
            hi = mid
    b = lo
    if p.blen[b] + 1 + nlen > BUF_BYTES and part_flush(p, b) < 0:
        return -1
    p.buf[b][p.blen[b]] = <unsigned char>nlen
    memcpy(p.buf[b] + p.blen[b] + 1, name, nlen)
    p.blen[b] += 1 + nlen
    p.count[b] += 1
    return 0


cdef int part_flush_all(partition *p) noexcept nogil:
    cdef int b
    for b in range(p.nb):
        if part_flush(p, b) < 0:
            return -1
    return 0


cdef raise_part_error(partition *p, str spill_dir):
    cdef char name[96]
    if p.err == ENOMEM or p.err == 0:
        raise MemoryError("flatspill: no memory for the listing's buckets")
    bucket_name(p, p.err_bucket, name, sizeof(name))
    raise OSError(p.err, os.strerror(p.err), os.path.join(spill_dir, name.decode()))


# -- reading a bucket file in blocks ---------------------------------------------------------

ctypedef struct reader:
    int fd
    unsigned char *buf
    size_t len
    size_t pos
    int eof
    int err


cdef int rd_next(reader *r, const unsigned char **name, size_t *nlen) noexcept nogil:
    """The next record: 1, 0 at the end, -1 on a read error (r.err) or a torn record."""
    cdef long got
    cdef size_t need
    while True:
        if r.pos < r.len:
            need = 1 + r.buf[r.pos]
            if r.pos + need <= r.len:
                name[0] = r.buf + r.pos + 1
                nlen[0] = r.buf[r.pos]
                r.pos += need
                return 1
        if r.eof:
            if r.pos < r.len:
                r.err = 0
                return -1
            return 0
        if r.pos:
            memmove(r.buf, r.buf + r.pos, r.len - r.pos)  # a partial record: to the front
            r.len -= r.pos
            r.pos = 0
        got = read(r.fd, r.buf + r.len, READ_BYTES - r.len)
        if got < 0:
            if errno == EINTR:
                continue
            r.err = errno
            return -1
        if got == 0:
            r.eof = 1
        r.len += <size_t>got


cdef int open_reader(reader *r, int dirfd, bytes fname, str where) except -1:
    memset(r, 0, sizeof(reader))
    r.fd = openat(dirfd, PyBytes_AS_STRING(fname), O_RDONLY | O_CLOEXEC)
    if r.fd < 0:
        e = errno
        raise OSError(e, os.strerror(e), os.path.join(where, os.fsdecode(fname)))
    r.buf = <unsigned char *>malloc(READ_BYTES)
    if r.buf == NULL:
        close(r.fd)
        raise MemoryError("flatspill: no memory to read a bucket")
    return 0


cdef void close_reader(reader *r) noexcept:
    if r.fd >= 0:
        close(r.fd)
    free(r.buf)
    r.fd = -1
    r.buf = NULL


cdef raise_read_error(reader *r, bytes fname, str where):
    path = os.path.join(where, os.fsdecode(fname))
    if r.err:
        raise OSError(r.err, os.strerror(r.err), path)
    raise OSError(errno_EIO, "a spill file ends inside a record", path)


cdef list sorted_list(nameset *s):
    """The set's names as a sorted list of bytes."""
    cdef const unsigned char **ptrs
    cdef size_t i
    cdef list out
    with nogil:
        ptrs = ns_sorted(s)
    if ptrs == NULL:
        raise MemoryError("flatspill: no memory to sort the names")
    try:
        out = [None] * s.n
        for i in range(s.n):
            out[i] = PyBytes_FromStringAndSize(<const char *>ptrs[i] + 1, ptrs[i][0])
    finally:
        free(ptrs)
    return out
