"""Native listing of a flatfs directory, for incremental backups at listing speed
(docs/INCREMENTAL.md, "Unchanged flatfs blocks").

``FlatScan`` lists the shard directories of a flatfs root in parallel threads: each thread
runs with the GIL released, takes the next shard directory from an atomic counter and reads
it with ``readdir`` (file types from ``d_type``; ``fstatat`` only where the file system gives
none). For each file that belongs to the layout (``<shard>/<NAME>.data``, NAME valid and in
the shard its name maps to) it keeps the key ``/NAME`` (less the name prefix) in its own
arena, then sorts its keys (radix sort on 8 bytes, ties by ``memcmp``). A shard directory
holding anything else is flagged (``misfit_shards``) so the file audit looks at its names in
Python (flatfs_audit.py); the common case, every name in place, costs no Python work per file.
``FlatScan.keys()`` merges the threads' runs into one ``FlatKeys``: a blob of the keys in
increasing order with their offsets and flags, no Python object per key.

A key is *trusted* (``FlatKeys.trusted``) when its file is a regular file (not a symbolic link
or anything else) and its name is the base32 (RFC 4648, upper case, no padding) of a multihash
(not the identity hash; digest 16 to 64 bytes), or of a CIDv1 holding one: such a name is the
hash of the file's value, so a known key stands for a known value.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int8_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset, strlen

from flatname cimport SHARD_NEXT_TO_LAST, SHARD_PREFIX, SHARD_SUFFIX, in_place
from frameutil cimport key_cmp
from libposixdir cimport (
    AT_SYMLINK_NOFOLLOW,
    DIR,
    DT_DIR,
    DT_REG,
    DT_UNKNOWN,
    ENOENT,
    ENOTDIR,
    O_CLOEXEC,
    O_DIRECTORY,
    O_RDONLY,
    S_ISDIR,
    S_ISREG,
    close,
    closedir,
    dirent,
    dirfd,
    ds_atomic_add,
    ds_atomic_next,
    errno,
    fdopendir,
    fstatat,
    openat,
    readdir,
    stat,
)
from libxxhash cimport XXH3_64bits

import os
import threading

cdef enum:
    K_TRUSTED = 1
    S_MISFIT = 1        # shard status: holds a file that is not of the layout
    S_GONE = 2          # shard status: vanished while listed
    MAX_PARAM = 255

KINDS = {"prefix": SHARD_PREFIX, "suffix": SHARD_SUFFIX, "next-to-last": SHARD_NEXT_TO_LAST}


ctypedef struct fl_item:
    uint64_t sk           # 8 bytes of the key after the run's common prefix, big endian
    uint64_t off          # in the run's arena
    uint32_t len
    uint32_t flags


ctypedef struct fl_run:
    unsigned char *arena
    size_t alen
    size_t acap
    fl_item *items
    size_t n
    size_t cap
    int err               # errno of the first failure (0: none)
    long err_shard
    int nomem


cdef int8_t B32[256]          # RFC 4648 base32 value of an upper-case character, else -1


cdef void init_tables() noexcept:
    cdef int c
    for c in range(256):
        B32[c] = c - c'A' if c'A' <= c <= c'Z' else (c - c'2' + 26 if c'2' <= c <= c'7' else -1)


init_tables()


cdef inline int uvarint(const unsigned char *p, size_t n, size_t *pos, uint64_t *out) noexcept nogil:
    cdef uint64_t v = 0
    cdef int shift = 0
    while pos[0] < n and shift < 63:
        v |= <uint64_t>(p[pos[0]] & 0x7f) << shift
        pos[0] += 1
        if not (p[pos[0] - 1] & 0x80):
            out[0] = v
            return 0
        shift += 7
    return -1


cdef bint is_content_name(const unsigned char *s, size_t L) noexcept nogil:
    """The name is base32 of a multihash (not identity, 16-64 byte digest) or of a CIDv1."""
    cdef unsigned char buf[168]
    cdef size_t out = 0, pos = 0, i
    cdef uint64_t acc = 0, v = 0, length = 0
    cdef int bits = 0, d
    if L == 0 or L > 255:
        return False
    for i in range(L):
        d = B32[s[i]]
        if d < 0:
            return False
        acc = ((acc << 5) | <uint64_t>d) & 0xffff
        bits += 5
        if bits >= 8:
            bits -= 8
            buf[out] = <unsigned char>(acc >> bits)
            out += 1
    if bits >= 5 or (acc & ((1u << bits) - 1)) != 0:
        return False  # not the canonical unpadded encoding of whole bytes
    if uvarint(buf, out, &pos, &v) < 0:
        return False
    if v == 1:  # CIDv1: version, codec, then the multihash
        if uvarint(buf, out, &pos, &v) < 0 or uvarint(buf, out, &pos, &v) < 0:
            return False
    if v == 0:  # the identity "hash" holds the value itself, not a digest
        return False
    if uvarint(buf, out, &pos, &length) < 0:
        return False
    return 16 <= length <= 64 and pos + length == out


cdef int run_add(fl_run *r, const unsigned char *key, size_t klen, uint32_t flags) noexcept nogil:
    cdef size_t ncap
    cdef void *p
    if r.alen + klen > r.acap:
        ncap = r.acap * 2 if r.acap else (1 << 20)
        while ncap < r.alen + klen:
            ncap *= 2
        p = realloc(r.arena, ncap)
        if p == NULL:
            return -1
        r.arena = <unsigned char *>p
        r.acap = ncap
    if r.n == r.cap:
        ncap = r.cap * 2 if r.cap else 16384
        p = realloc(r.items, ncap * sizeof(fl_item))
        if p == NULL:
            return -1
        r.items = <fl_item *>p
        r.cap = ncap
    memcpy(r.arena + r.alen, key, klen)
    r.items[r.n].off = r.alen
    r.items[r.n].len = <uint32_t>klen
    r.items[r.n].flags = flags
    r.items[r.n].sk = 0
    r.alen += klen
    r.n += 1
    return 0


cdef int run_sort(fl_run *r) noexcept nogil:
    """Sort a run's items by key: LSD radix sort on the 8 bytes after the run's common
    prefix (16-bit digits, digits all items share skipped), then ties by full comparison."""
    cdef size_t n = r.n, i, j, lcp, m, pos
    cdef const unsigned char *k0
    cdef const unsigned char *k
    cdef uint64_t sk
    cdef fl_item *tmp
    cdef fl_item *src
    cdef fl_item *dst
    cdef fl_item *sw
    cdef fl_item t
    cdef size_t *count
    cdef int shift
    if n < 2:
        return 0
    k0 = r.arena + r.items[0].off
    lcp = r.items[0].len
    for i in range(1, n):
        k = r.arena + r.items[i].off
        m = r.items[i].len if r.items[i].len < lcp else lcp
        j = 0
        while j < m and k[j] == k0[j]:
            j += 1
        lcp = j
    for i in range(n):
        k = r.arena + r.items[i].off
        sk = 0
        for j in range(8):
            sk <<= 8
            if lcp + j < r.items[i].len:
                sk |= k[lcp + j]
        r.items[i].sk = sk
    tmp = <fl_item *>malloc(n * sizeof(fl_item))
    count = <size_t *>malloc(65536 * sizeof(size_t))
    if tmp == NULL or count == NULL:
        free(tmp)
        free(count)
        return -1
    src, dst = r.items, tmp
    for shift in range(0, 64, 16):
        memset(count, 0, 65536 * sizeof(size_t))
        for i in range(n):
            count[(src[i].sk >> shift) & 0xffff] += 1
        if count[(src[0].sk >> shift) & 0xffff] == n:
            continue  # every item has this digit
        pos = 0
        for i in range(65536):
            m = count[i]
            count[i] = pos
            pos += m
        for i in range(n):
            j = (src[i].sk >> shift) & 0xffff
            dst[count[j]] = src[i]
            count[j] += 1
        sw = src
        src = dst
        dst = sw
    if src != r.items:
        memcpy(r.items, src, n * sizeof(fl_item))
    free(tmp)
    free(count)
    # ties on the 8 bytes: insertion sort by the whole key (rare: names are hashes)
    i = 1
    while i < n:
        if r.items[i].sk == r.items[i - 1].sk:
            t = r.items[i]
            j = i
            while j > 0 and r.items[j - 1].sk == t.sk and key_cmp(
                    r.arena + r.items[j - 1].off, r.items[j - 1].len,
                    r.arena + t.off, t.len) > 0:
                r.items[j] = r.items[j - 1]
                j -= 1
            r.items[j] = t
        i += 1
    return 0


cdef class FlatKeys:
    """Sorted keys of a flatfs listing: ``len()``, ``key(i)``, ``keys(lo, hi)``,
    ``find(key)`` (first index whose key >= key), ``trusted(i)``, ``is_boundary(i, n)`` and
    ``check_chunk(...)``; all native, no Python object per key."""

    cdef unsigned char *blob
    cdef uint64_t *off
    cdef uint8_t *flags
    cdef size_t n

    def __dealloc__(self):
        free(self.blob)
        free(self.off)
        free(self.flags)

    def __len__(self):
        return self.n

    cdef inline int cmp_at(self, size_t i, const unsigned char *key, size_t klen) noexcept nogil:
        return key_cmp(self.blob + self.off[i], self.off[i + 1] - self.off[i], key, klen)

    cdef size_t lower_bound(self, const unsigned char *key, size_t klen) noexcept nogil:
        cdef size_t lo = 0, hi = self.n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.cmp_at(mid, key, klen) < 0:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def key(self, size_t i) -> bytes:
        if i >= self.n:
            raise IndexError(i)
        return PyBytes_FromStringAndSize(<const char *>self.blob + self.off[i],
                                         self.off[i + 1] - self.off[i])

    def keys(self, size_t lo, size_t hi) -> list:
        """The keys ``lo`` to ``hi - 1`` (for the parts of a store that must be read)."""
        if hi > self.n:
            hi = self.n
        return [PyBytes_FromStringAndSize(<const char *>self.blob + self.off[i],
                                          self.off[i + 1] - self.off[i])
                for i in range(lo, hi)]

    def find(self, bytes key) -> int:
        return self.lower_bound(<const unsigned char *>PyBytes_AS_STRING(key),
                                PyBytes_GET_SIZE(key))

    def equals(self, size_t i, bytes key) -> bool:
        return i < self.n and self.cmp_at(i, <const unsigned char *>PyBytes_AS_STRING(key),
                                          PyBytes_GET_SIZE(key)) == 0

    def trusted(self, size_t i) -> bool:
        return i < self.n and (self.flags[i] & K_TRUSTED) != 0

    def is_boundary(self, size_t i, uint64_t chunk_size) -> bool:
        """XXH3-64(key i) % chunk_size == 0: a natural chunk boundary (FORMAT.md §4.1)."""
        if i >= self.n or chunk_size == 0:
            return False
        return XXH3_64bits(self.blob + self.off[i], self.off[i + 1] - self.off[i]) \
            % chunk_size == 0

    def check_chunk(self, bytes first, bytes last, uint64_t records, uint64_t keys_xxh3):
        """Index ``lo`` such that keys ``lo .. lo + records - 1`` run from ``first`` to
        ``last``, are all trusted and have the key digest ``keys_xxh3`` (FORMAT.md §4.2):
        exactly the parent chunk's keys. -1 otherwise."""
        cdef const unsigned char *f = <const unsigned char *>PyBytes_AS_STRING(first)
        cdef const unsigned char *l = <const unsigned char *>PyBytes_AS_STRING(last)
        cdef size_t flen = PyBytes_GET_SIZE(first), llen = PyBytes_GET_SIZE(last)
        cdef size_t lo, hi, i, total, klen, pos
        cdef unsigned char *buf
        cdef uint64_t h
        if records == 0:
            return -1
        with nogil:
            lo = self.lower_bound(f, flen)
        if lo >= self.n or records > self.n - lo:
            return -1
        hi = lo + records
        if self.cmp_at(lo, f, flen) != 0 or self.cmp_at(hi - 1, l, llen) != 0:
            return -1
        for i in range(lo, hi):
            if not (self.flags[i] & K_TRUSTED):
                return -1
        total = (self.off[hi] - self.off[lo]) + 4 * records
        buf = <unsigned char *>malloc(total)
        if buf == NULL:
            raise MemoryError("flatlist: no memory for a chunk's key digest")
        with nogil:
            pos = 0
            for i in range(lo, hi):
                klen = self.off[i + 1] - self.off[i]
                buf[pos] = klen & 0xff
                buf[pos + 1] = (klen >> 8) & 0xff
                buf[pos + 2] = (klen >> 16) & 0xff
                buf[pos + 3] = (klen >> 24) & 0xff
                memcpy(buf + pos + 4, self.blob + self.off[i], klen)
                pos += 4 + klen
            h = XXH3_64bits(buf, pos)
        free(buf)
        return <long>lo if h == keys_xxh3 else -1

    @staticmethod
    def from_names(list names, size_t plen) -> FlatKeys:
        """The keys of a typed bucket of a spilled listing (ext/flatspill.pyx): ``names``
        in increasing order, each ``prefix + NAME + t`` (``plen`` bytes of name prefix;
        ``t`` 1 for a regular file, else 0) is key ``/NAME``, trusted as ``FlatScan``
        trusts it."""
        cdef FlatKeys out = FlatKeys.__new__(FlatKeys)
        cdef size_t n = len(names), i, total = 0, L, pos = 0
        cdef bytes b
        cdef const unsigned char *p
        for b in names:
            if <size_t>PyBytes_GET_SIZE(b) < plen + 2:
                raise ValueError("FlatKeys.from_names: a name shorter than its prefix")
            total += PyBytes_GET_SIZE(b) - plen
        out.blob = <unsigned char *>malloc(total + 1)
        out.off = <uint64_t *>malloc((n + 1) * sizeof(uint64_t))
        out.flags = <uint8_t *>malloc(n + 1)
        if out.blob == NULL or out.off == NULL or out.flags == NULL:
            raise MemoryError("flatlist: no memory for a bucket's keys")
        for i in range(n):
            b = <bytes>names[i]
            p = <const unsigned char *>PyBytes_AS_STRING(b)
            L = PyBytes_GET_SIZE(b) - plen - 1
            out.off[i] = pos
            out.blob[pos] = c'/'
            memcpy(out.blob + pos + 1, p + plen, L)
            out.flags[i] = K_TRUSTED if (p[plen + L] == 1 and
                                         is_content_name(p + plen, L)) else 0
            pos += 1 + L
        out.off[n] = pos
        out.n = n
        return out

    @staticmethod
    def from_records(bytes records, size_t n, size_t plen) -> FlatKeys:
        """As :meth:`from_names`, from ``n`` names in one ``bytes`` of records
        ``len:u8 | name`` (ext/flatspill.pyx ``read_sorted_records``)."""
        cdef FlatKeys out = FlatKeys.__new__(FlatKeys)
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(records)
        cdef size_t size = PyBytes_GET_SIZE(records), i, at = 0, pos = 0, m, L
        cdef bint bad = False
        if size < n or size - n < n * plen:
            raise ValueError("FlatKeys.from_records: records shorter than their count")
        out.blob = <unsigned char *>malloc(size - n - n * plen + 1)
        out.off = <uint64_t *>malloc((n + 1) * sizeof(uint64_t))
        out.flags = <uint8_t *>malloc(n + 1)
        if out.blob == NULL or out.off == NULL or out.flags == NULL:
            raise MemoryError("flatlist: no memory for a bucket's keys")
        with nogil:
            for i in range(n):
                if at >= size:
                    bad = True
                    break
                m = p[at]
                if m < plen + 2 or at + 1 + m > size:
                    bad = True
                    break
                L = m - plen - 1
                out.off[i] = pos
                out.blob[pos] = c'/'
                memcpy(out.blob + pos + 1, p + at + 1 + plen, L)
                out.flags[i] = K_TRUSTED if (p[at + m] == 1 and
                                             is_content_name(p + at + 1 + plen, L)) else 0
                pos += 1 + L
                at += 1 + m
            out.off[n if not bad else 0] = pos
        if bad or at != size:
            raise ValueError("FlatKeys.from_records: a torn or short record")
        out.n = n
        return out

    def join(self, size_t lo, FlatKeys other) -> FlatKeys:
        """This one's keys from index ``lo`` on, then ``other``'s (all greater)."""
        cdef FlatKeys out = FlatKeys.__new__(FlatKeys)
        cdef size_t i, a, na, nb, base, bbytes
        if lo > self.n:
            lo = self.n
        na = self.n - lo
        nb = other.n
        a = self.off[lo] if self.n else 0
        base = (self.off[self.n] - a) if self.n else 0
        bbytes = other.off[nb] if nb else 0
        out.blob = <unsigned char *>malloc(base + bbytes + 1)
        out.off = <uint64_t *>malloc((na + nb + 1) * sizeof(uint64_t))
        out.flags = <uint8_t *>malloc(na + nb + 1)
        if out.blob == NULL or out.off == NULL or out.flags == NULL:
            raise MemoryError("flatlist: no memory for the listing's window")
        with nogil:
            if base:
                memcpy(out.blob, self.blob + a, base)
            if bbytes:
                memcpy(out.blob + base, other.blob, bbytes)
            for i in range(na):
                out.off[i] = self.off[lo + i] - a
                out.flags[i] = self.flags[lo + i]
            for i in range(nb):
                out.off[na + i] = other.off[i] + base
                out.flags[na + i] = other.flags[i]
            out.off[na + nb] = base + bbytes
        out.n = na + nb
        return out


cdef class FlatScan:
    """One listing of a flatfs root: ``FlatScan(root_fd, shards, kind, param, name_prefix,
    keys=True)``, then ``run(threads)``; ``misfit_shards()``, ``gone_shards()`` and
    ``keys()`` (a FlatKeys, once) after it. ``root_fd`` stays the caller's."""

    cdef int rootfd
    cdef char **shards
    cdef size_t *shard_len
    cdef uint8_t *status
    cdef long nshards
    cdef long next_shard
    cdef int kind
    cdef int param
    cdef bytes prefix
    cdef const unsigned char *pfx
    cdef size_t plen
    cdef bint want_keys
    cdef fl_run *runs
    cdef int nruns
    cdef list _names
    cdef long listed               # keys listed so far (all threads), counted a shard at a time
    cdef long max_keys             # run() stops once more are listed (0: no bound)
    cdef readonly bint over        # it stopped: more than max_keys keys

    def __cinit__(self, int root_fd, list shards, str kind, int param, bytes name_prefix=b"",
                  bint keys=True):
        cdef long i
        cdef bytes s
        if kind not in KINDS:
            raise ValueError(f"unknown shard function {kind!r}")
        if param < 1 or param > MAX_PARAM:
            raise ValueError(f"shard parameter {param} out of range")
        self.rootfd = root_fd
        self.kind = KINDS[kind]
        self.param = param
        self.prefix = bytes(name_prefix)
        self.pfx = <const unsigned char *>PyBytes_AS_STRING(self.prefix)
        self.plen = PyBytes_GET_SIZE(self.prefix)
        self.want_keys = keys
        self._names = [bytes(s) for s in shards]
        self.nshards = len(self._names)
        self.shards = <char **>malloc((self.nshards + 1) * sizeof(char *))
        self.shard_len = <size_t *>malloc((self.nshards + 1) * sizeof(size_t))
        self.status = <uint8_t *>malloc(self.nshards + 1)
        if self.shards == NULL or self.shard_len == NULL or self.status == NULL:
            raise MemoryError("flatlist: no memory for the shard list")
        for i in range(self.nshards):
            s = self._names[i]
            if b"\0" in s or b"/" in s:
                raise ValueError(f"bad shard directory name {s!r}")
            self.shards[i] = PyBytes_AS_STRING(s)
            self.shard_len[i] = PyBytes_GET_SIZE(s)
            self.status[i] = 0
        self.next_shard = 0
        self.runs = NULL
        self.nruns = 0
        self.listed = 0
        self.max_keys = 0
        self.over = False

    def __dealloc__(self):
        self._free_runs()
        free(self.shards)
        free(self.shard_len)
        free(self.status)

    cdef void _free_runs(self) noexcept:
        cdef int t
        if self.runs != NULL:
            for t in range(self.nruns):
                free(self.runs[t].arena)
                free(self.runs[t].items)
            free(self.runs)
            self.runs = NULL
        self.nruns = 0

    cdef int scan_shard(self, fl_run *r, long s) noexcept nogil:
        cdef int fd, dfd, typ
        cdef DIR *d
        cdef dirent *e
        cdef const unsigned char *name
        cdef size_t nlen, plen = self.plen
        cdef const unsigned char *prefix = self.pfx
        cdef stat st
        cdef unsigned char key[260]
        cdef uint32_t flags
        fd = openat(self.rootfd, self.shards[s], O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0:
            if errno == ENOENT or errno == ENOTDIR:
                self.status[s] = S_GONE
                return 0
            r.err = errno
            r.err_shard = s
            return -1
        d = fdopendir(fd)
        if d == NULL:
            r.err = errno
            r.err_shard = s
            close(fd)
            return -1
        dfd = dirfd(d)
        while True:
            e = readdir(d)
            if e == NULL:
                break
            name = <const unsigned char *>e.d_name
            nlen = strlen(e.d_name)
            if name[0] == c'.' and (nlen == 1 or (nlen == 2 and name[1] == c'.')):
                continue
            typ = e.d_type
            if typ == DT_UNKNOWN:
                if fstatat(dfd, e.d_name, &st, AT_SYMLINK_NOFOLLOW) != 0:
                    continue  # vanished
                typ = DT_REG if S_ISREG(st.st_mode) else (DT_DIR if S_ISDIR(st.st_mode)
                                                          else DT_UNKNOWN)
            if typ == DT_DIR or not in_place(name, nlen, <const unsigned char *>self.shards[s],
                                             self.shard_len[s], self.kind, self.param,
                                             prefix, plen):
                self.status[s] = S_MISFIT
                continue
            if not self.want_keys:
                continue
            key[0] = c'/'
            memcpy(key + 1, name + plen, nlen - 5 - plen)
            flags = K_TRUSTED if (typ == DT_REG and is_content_name(
                name + plen, nlen - 5 - plen)) else 0
            if run_add(r, key, nlen - 4 - plen, flags) < 0:
                r.nomem = 1
                closedir(d)
                return -1
        closedir(d)
        return 0

    def _work(self, int t):
        cdef fl_run *r = &self.runs[t]
        cdef long s
        cdef size_t before
        with nogil:
            while True:
                s = ds_atomic_next(&self.next_shard)
                if s >= self.nshards:
                    break
                before = r.n
                if self.scan_shard(r, s) < 0:
                    self.next_shard = self.nshards  # the others stop at their next shard
                    break
                if self.max_keys and ds_atomic_add(&self.listed, <long>(r.n - before)) \
                        > self.max_keys:
                    self.over = True
                    self.next_shard = self.nshards
                    break
            if r.err == 0 and not r.nomem and self.want_keys and not self.over:
                if run_sort(r) < 0:
                    r.nomem = 1

    def run(self, int threads=1, long max_keys=0):
        """List every shard directory with ``threads`` threads (the GIL released). With
        ``max_keys`` (keys wanted) it stops once more than that many keys are listed
        (counted a shard directory at a time): ``over`` is then True, the keys are dropped
        and ``keys()`` is not to be asked (the caller lists through buckets instead)."""
        cdef int t
        if self.runs != NULL:
            raise RuntimeError("FlatScan.run: already run")
        self.max_keys = max_keys if self.want_keys and max_keys > 0 else 0
        threads = max(1, min(threads, 64, max(1, self.nshards)))
        self.runs = <fl_run *>malloc(threads * sizeof(fl_run))
        if self.runs == NULL:
            raise MemoryError("flatlist: no memory for the listing threads")
        memset(self.runs, 0, threads * sizeof(fl_run))
        self.nruns = threads
        workers = [threading.Thread(target=self._work, args=(t,), name=f"dsbackup-list-{t}")
                   for t in range(1, threads)]
        for w in workers:
            w.start()
        try:
            self._work(0)
        finally:
            for w in workers:
                w.join()
        for t in range(threads):
            if self.runs[t].nomem:
                self._free_runs()
                raise MemoryError("flatlist: no memory for the listed keys")
            if self.runs[t].err:
                err, shard = self.runs[t].err, self._names[self.runs[t].err_shard]
                self._free_runs()
                raise OSError(err, os.strerror(err), os.fsdecode(shard))
        if self.over:
            self._free_runs()

    def misfit_shards(self) -> list:
        """Shard directories holding something that is not of the layout."""
        return [self._names[i] for i in range(self.nshards) if self.status[i] == S_MISFIT]

    def gone_shards(self) -> list:
        return [self._names[i] for i in range(self.nshards) if self.status[i] == S_GONE]

    def keys(self) -> FlatKeys:
        """Every listed key in increasing order (the runs are merged and freed)."""
        cdef FlatKeys out = FlatKeys.__new__(FlatKeys)
        cdef size_t total = 0, bytes_ = 0, i, pos = 0, done = 0
        cdef int t, best, nr = self.nruns
        cdef size_t *head
        cdef fl_run *r
        cdef fl_item *it
        cdef fl_item *bi
        if self.runs == NULL or not self.want_keys or self.over:
            raise RuntimeError("FlatScan.keys: run() with keys=True first")
        for t in range(nr):
            total += self.runs[t].n
            bytes_ += self.runs[t].alen
        out.blob = <unsigned char *>malloc(bytes_ + 1)
        out.off = <uint64_t *>malloc((total + 1) * sizeof(uint64_t))
        out.flags = <uint8_t *>malloc(total + 1)
        head = <size_t *>malloc(nr * sizeof(size_t))
        if out.blob == NULL or out.off == NULL or out.flags == NULL or head == NULL:
            free(head)
            raise MemoryError("flatlist: no memory for the sorted keys")
        with nogil:
            memset(head, 0, nr * sizeof(size_t))
            while done < total:
                best = -1
                bi = NULL
                for t in range(nr):
                    r = &self.runs[t]
                    if head[t] < r.n:
                        it = &r.items[head[t]]
                        if bi == NULL or key_cmp(r.arena + it.off, it.len,
                                                 self.runs[best].arena + bi.off, bi.len) < 0:
                            best = t
                            bi = it
                r = &self.runs[best]
                out.off[done] = pos
                out.flags[done] = <uint8_t>bi.flags
                memcpy(out.blob + pos, r.arena + bi.off, bi.len)
                pos += bi.len
                head[best] += 1
                done += 1
            out.off[total] = pos
        free(head)
        out.n = total
        self._free_runs()
        return out
