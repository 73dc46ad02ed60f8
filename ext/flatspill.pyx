"""One listing of a flatfs root in global name order with a bounded number of names in
memory: an external partition sort (docs/DATASTORES.md, "Listing a large flatfs store").

``SpillScan`` reads each shard directory once (``readdir``, the GIL released, a signal check
and the caller's ``check`` between directories) and keeps the names in place (flatname.pxd; any file type, as
``os.listdir`` lists them) that fall in ``[lo, hi)``. While at most ``max_names`` are held
``fill()`` ends with them (``sorted_names()``). When one more arrives it stops; ``spill()``
then takes split keys from the held names (the first directories listed: flatfs spreads
names evenly over its shards), writes every held name and every name still to come to the
bucket file of its key range (``<tag><i>`` in the spill directory, records ``len:u8 |
name``, appended through a 64 KiB buffer a bucket) and returns the buckets' counts.
``read_sorted()`` gives one bucket's names sorted; ``resplit()`` cuts a bucket that holds
more than the bound into smaller ones (two streaming reads of the bucket file, not of the
store). No Python object is made per name until a sorted list is handed out.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint8_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcpy, memmove, memset, strlen

from flatname cimport SHARD_NEXT_TO_LAST, SHARD_PREFIX, SHARD_SUFFIX, in_place
from frameutil cimport key_cmp
from libposixdir cimport (
    AT_SYMLINK_NOFOLLOW,
    DIR,
    DT_DIR,
    DT_REG,
    DT_UNKNOWN,
    EINTR,
    ENOENT,
    ENOMEM,
    ENOTDIR,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_RDONLY,
    O_WRONLY,
    close,
    closedir,
    dirent,
    dirfd,
    errno,
    fdopendir,
    openat,
    read,
    readdir,
    S_ISDIR,
    S_ISREG,
    fstatat,
    stat,
    write,
)

import errno as _errno
import os

errno_EIO = _errno.EIO

KINDS = {"prefix": SHARD_PREFIX, "suffix": SHARD_SUFFIX, "next-to-last": SHARD_NEXT_TO_LAST}

cdef enum:
    MAX_BUCKETS = 256
    BUF_BYTES = 65536
    READ_BYTES = 1 << 20
    MAX_PARAM = 255


include "spillbuckets.pxi"


cdef int _read_names(int dir_fd, bytes fname, str spill_dir, nameset *s) except -1:
    """Every name of bucket file ``fname`` into ``s`` (MemoryError, or its read error)."""
    cdef reader r
    cdef const unsigned char *name
    cdef size_t nlen
    cdef int got = 0, nomem = 0
    open_reader(&r, dir_fd, fname, spill_dir)
    try:
        with nogil:
            while True:
                got = rd_next(&r, &name, &nlen)
                if got <= 0:
                    break
                if ns_add(s, name, nlen) < 0:
                    nomem = 1
                    break
        if nomem:
            raise MemoryError("flatspill: no memory for a bucket's names")
        if got < 0:
            raise_read_error(&r, fname, spill_dir)
    finally:
        close_reader(&r)
    return 0


def read_sorted(int dir_fd, bytes fname, str spill_dir="") -> list:
    """The names of one bucket file in increasing order (``spill_dir`` names it in
    errors)."""
    cdef nameset s
    memset(&s, 0, sizeof(nameset))
    try:
        _read_names(dir_fd, fname, spill_dir, &s)
        return sorted_list(&s)
    finally:
        ns_free(&s)


def read_sorted_records(int dir_fd, bytes fname, str spill_dir="") -> tuple:
    """``(records, count)``: the names of one bucket file in increasing order as one
    ``bytes`` of records ``len:u8 | name`` (no object per name; ``FlatKeys.from_records``)."""
    cdef nameset s
    cdef const unsigned char **ptrs = NULL
    cdef size_t i, pos = 0, L
    cdef char *buf
    memset(&s, 0, sizeof(nameset))
    try:
        _read_names(dir_fd, fname, spill_dir, &s)
        with nogil:
            ptrs = ns_sorted(&s)
        if ptrs == NULL:
            raise MemoryError("flatspill: no memory to sort the names")
        out = PyBytes_FromStringAndSize(NULL, s.alen)
        buf = PyBytes_AS_STRING(out)
        with nogil:
            for i in range(s.n):
                L = 1 + ptrs[i][0]
                memcpy(buf + pos, ptrs[i], L)
                pos += L
        return out, s.n
    finally:
        free(ptrs)
        ns_free(&s)


def resplit(int dir_fd, bytes fname, uint64_t count, int nsub, size_t sample_max,
            bytes tag, str spill_dir) -> list:
    """Cut bucket file ``fname`` (``count`` names) into up to ``nsub`` bucket files
    ``<tag><i>`` at quantiles of a systematic sample of at most ``sample_max`` of its names;
    their counts in order (the caller removes ``fname``)."""
    cdef reader r
    cdef nameset sample
    cdef partition p
    cdef const unsigned char *name
    cdef const unsigned char **ptrs = NULL
    cdef size_t nlen
    cdef uint64_t i = 0, every
    cdef int got = 0, bad = 0
    cdef const char *ctag = PyBytes_AS_STRING(tag)
    if sample_max < 2:
        sample_max = 2
    every = (count + sample_max - 1) // sample_max if count > sample_max else 1
    memset(&sample, 0, sizeof(nameset))
    memset(&p, 0, sizeof(partition))
    nsub = max(2, min(nsub, MAX_BUCKETS))
    try:
        open_reader(&r, dir_fd, fname, spill_dir)
        try:
            with nogil:
                while True:
                    got = rd_next(&r, &name, &nlen)
                    if got <= 0:
                        break
                    if i % every == 0 and ns_add(&sample, name, nlen) < 0:
                        bad = 1
                        break
                    i += 1
            if bad:
                raise MemoryError("flatspill: no memory for a bucket's sample")
            if got < 0:
                raise_read_error(&r, fname, spill_dir)
        finally:
            close_reader(&r)
        with nogil:
            ptrs = ns_sorted(&sample)
            bad = ptrs == NULL or part_init(&p, dir_fd, ctag, ptrs,
                                             sample.n, nsub) < 0
        free(ptrs)
        ns_free(&sample)
        if bad:
            raise MemoryError("flatspill: no memory to split a bucket")
        open_reader(&r, dir_fd, fname, spill_dir)
        try:
            with nogil:
                while True:
                    got = rd_next(&r, &name, &nlen)
                    if got <= 0:
                        break
                    if part_add(&p, name, nlen) < 0:
                        bad = 1
                        break
                if not bad and got == 0 and part_flush_all(&p) < 0:
                    bad = 1
            if bad:
                raise_part_error(&p, spill_dir)
            if got < 0:
                raise_read_error(&r, fname, spill_dir)
        finally:
            close_reader(&r)
        return [p.count[b] for b in range(p.nb)]
    finally:
        ns_free(&sample)
        part_free(&p)


# -- the listing -----------------------------------------------------------------------------

cdef class SpillScan:
    """``SpillScan(root_fd, shards, kind, param, name_prefix, lo, hi, max_names,
    root_name, check)``: see the module doc. ``root_fd`` stays the caller's; ``hi`` None is
    no upper bound; ``root_name`` names the root in errors; ``check`` (a callable or None)
    is called between shard directories and may raise to stop the listing."""

    cdef int rootfd
    cdef bytes root_name
    cdef list _names
    cdef const char **shard_ptr
    cdef size_t *shard_len
    cdef const unsigned char *pfx
    cdef size_t plen
    cdef const unsigned char *plo
    cdef size_t lolen
    cdef const unsigned char *phi
    cdef size_t hilen
    cdef long nshards
    cdef long cur                  # the shard being (or next to be) listed
    cdef DIR *dir
    cdef int kind
    cdef int param
    cdef bytes prefix, lo, hi
    cdef bint has_hi
    cdef size_t max_names
    cdef nameset held
    cdef unsigned char pending[256]
    cdef int npending              # length of a name read while the set was full; -1: none
    cdef partition part
    cdef bint spilling
    cdef str spill_dir
    cdef int err
    cdef long err_shard
    cdef readonly size_t peak      # most names held at once
    cdef object check              # called between shard directories (may raise), or None
    cdef bint typed                # names carry a type byte; misfits are noted (see spill)
    cdef uint8_t *misfit           # typed: per shard, 1 when it holds a name not in place

    def __cinit__(self, int root_fd, list shards, str kind, int param, bytes name_prefix,
                  bytes lo, object hi, size_t max_names, bytes root_name=b"",
                  object check=None, bint typed=False):
        if kind not in KINDS:
            raise ValueError(f"unknown shard function {kind!r}")
        if param < 1 or param > MAX_PARAM:
            raise ValueError(f"shard parameter {param} out of range")
        self.rootfd = root_fd
        self.root_name = root_name
        self.check = check
        self._names = [bytes(s) for s in shards]
        for s in self._names:
            if b"\0" in s or b"/" in s:
                raise ValueError(f"bad shard directory name {s!r}")
        self.nshards = len(self._names)
        self.shard_ptr = <const char **>malloc((self.nshards + 1) * sizeof(char *))
        self.shard_len = <size_t *>malloc((self.nshards + 1) * sizeof(size_t))
        self.misfit = <uint8_t *>malloc(self.nshards + 1)
        self.typed = typed
        if self.shard_ptr == NULL or self.shard_len == NULL or self.misfit == NULL:
            raise MemoryError("flatspill: no memory for the shard list")
        memset(self.misfit, 0, self.nshards + 1)
        for i, s in enumerate(self._names):
            self.shard_ptr[i] = PyBytes_AS_STRING(s)
            self.shard_len[i] = PyBytes_GET_SIZE(s)
        self.cur = 0
        self.dir = NULL
        self.kind = KINDS[kind]
        self.param = param
        self.prefix = bytes(name_prefix)
        self.lo = bytes(lo)
        self.has_hi = hi is not None
        self.hi = bytes(hi) if hi is not None else b""
        self.max_names = max(1, max_names)
        self.pfx = <const unsigned char *>PyBytes_AS_STRING(self.prefix)
        self.plen = PyBytes_GET_SIZE(self.prefix)
        self.plo = <const unsigned char *>PyBytes_AS_STRING(self.lo)
        self.lolen = PyBytes_GET_SIZE(self.lo)
        self.phi = <const unsigned char *>PyBytes_AS_STRING(self.hi)
        self.hilen = PyBytes_GET_SIZE(self.hi)
        memset(&self.held, 0, sizeof(nameset))
        memset(&self.part, 0, sizeof(partition))
        self.npending = -1
        self.spilling = False
        self.peak = 0

    def __dealloc__(self):
        if self.dir != NULL:
            closedir(self.dir)
        ns_free(&self.held)
        part_free(&self.part)
        free(self.shard_ptr)
        free(self.shard_len)
        free(self.misfit)

    def misfit_shards(self) -> list:
        """Typed: the shard directories listed so far that hold something not in place."""
        return [self._names[i] for i in range(self.nshards) if self.misfit[i]]

    @property
    def position(self) -> tuple:
        """(shard directories fully listed, shard directories)."""
        return (self.cur, self.nshards)

    cdef int take(self, const unsigned char *name, size_t nlen) noexcept nogil:
        """A name in range: into its bucket, or held; 1 when the held set is full."""
        if self.spilling:
            return -1 if part_add(&self.part, name, nlen) < 0 else 0
        if self.held.n >= self.max_names:
            memcpy(self.pending, name, nlen)
            self.npending = <int>nlen
            return 1
        if ns_add(&self.held, name, nlen) < 0:
            self.err = ENOMEM
            return -1
        if self.held.n > self.peak:
            self.peak = self.held.n
        return 0

    cdef int step(self) noexcept nogil:
        """List (the rest of) shard ``cur``: 0 when done with it, 1 when the held set is
        full (the directory stays open), -1 on an error. Typed: only names in place that
        are not directories, each with a byte after it, 1 for a regular file, else 0 (no
        valid name character is below 2: the order stays the names' order); a shard holding
        anything else is marked a misfit, as FlatScan marks it (ext/flatlist.pyx)."""
        cdef int fd, r, typ = 0
        cdef stat st
        cdef unsigned char tname[256]
        cdef dirent *e
        cdef const unsigned char *name
        cdef size_t nlen, L
        cdef const char *shard = self.shard_ptr[self.cur]
        cdef size_t slen = self.shard_len[self.cur]
        cdef const unsigned char *pfx = self.pfx
        cdef size_t plen = self.plen
        cdef const unsigned char *lo = self.plo
        cdef size_t lolen = self.lolen
        cdef const unsigned char *hi = self.phi
        cdef size_t hilen = self.hilen
        if self.dir == NULL:
            fd = openat(self.rootfd, shard, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd < 0:
                if errno == ENOENT or errno == ENOTDIR:
                    return 0  # gone since the root was listed
                self.err = errno
                self.err_shard = self.cur
                return -1
            self.dir = fdopendir(fd)
            if self.dir == NULL:
                self.err = errno
                self.err_shard = self.cur
                close(fd)
                return -1
        while True:
            e = readdir(self.dir)
            if e == NULL:
                break
            name = <const unsigned char *>e.d_name
            nlen = strlen(e.d_name)
            if self.typed:
                if name[0] == c'.' and (nlen == 1 or (nlen == 2 and name[1] == c'.')):
                    continue
                typ = e.d_type
                if typ == DT_UNKNOWN:
                    if fstatat(dirfd(self.dir), e.d_name, &st, AT_SYMLINK_NOFOLLOW) != 0:
                        continue  # vanished
                    typ = DT_REG if S_ISREG(st.st_mode) else (
                        DT_DIR if S_ISDIR(st.st_mode) else DT_UNKNOWN)
                if typ == DT_DIR or not in_place(name, nlen, <const unsigned char *>shard,
                                                 slen, self.kind, self.param, pfx, plen):
                    self.misfit[self.cur] = 1
                    continue
            elif not in_place(name, nlen, <const unsigned char *>shard, slen, self.kind,
                              self.param, pfx, plen):
                continue
            L = nlen - 5
            if lolen and key_cmp(name, L, lo, lolen) < 0:
                continue
            if self.has_hi and key_cmp(name, L, hi, hilen) >= 0:
                continue
            if self.typed:
                memcpy(tname, name, L)
                tname[L] = 1 if typ == DT_REG else 0
                r = self.take(tname, L + 1)
            else:
                r = self.take(name, L)
            if r:
                return r
        closedir(self.dir)
        self.dir = NULL
        return 0

    cdef int run_shards(self) except -1:
        """List shards from ``cur`` on; 1 when stopped full, 0 at the end."""
        cdef int r
        while self.cur < self.nshards:
            with nogil:
                r = self.step()
            if r < 0:
                self._raise()
            if r == 1:
                return 1
            self.cur += 1
            PyErr_CheckSignals()
            if self.check is not None:
                self.check()
        return 0

    cdef _raise(self):
        if self.spilling and self.part.err:
            raise_part_error(&self.part, self.spill_dir)
        if self.err == ENOMEM:
            raise MemoryError("flatspill: no memory for the listed names")
        shard = self._names[self.err_shard]
        raise OSError(self.err, os.strerror(self.err),
                      os.path.join(os.fsdecode(self.root_name), os.fsdecode(shard)))

    def fill(self) -> bool:
        """List until done (True: ``sorted_names()`` holds them all) or until more than
        ``max_names`` names are in range (False: ``spill()`` next)."""
        if self.spilling:
            raise RuntimeError("SpillScan.fill: already spilling")
        return self.run_shards() == 0

    def sorted_names(self) -> list:
        """The held names in increasing order (after ``fill()`` returned True)."""
        out = sorted_list(&self.held)
        ns_free(&self.held)
        return out

    def spill(self, int dir_fd, str spill_dir, int nbuckets, bytes tag) -> list:
        """Cut the name range into up to ``nbuckets`` buckets at quantiles of the held
        names, write them and every name still to come to bucket files ``<tag><i>`` in
        ``dir_fd``; the buckets' counts, in order."""
        cdef const unsigned char **ptrs
        cdef size_t i
        cdef int bad = 0
        cdef const char *ctag = PyBytes_AS_STRING(tag)
        if self.spilling or self.npending < 0:
            raise RuntimeError("SpillScan.spill: fill() has not stopped full")
        self.spill_dir = spill_dir
        nbuckets = max(2, min(nbuckets, MAX_BUCKETS))
        with nogil:
            ptrs = ns_sorted(&self.held)
            if ptrs == NULL or part_init(&self.part, dir_fd, ctag, ptrs,
                                         self.held.n, nbuckets) < 0:
                bad = 1
            else:
                for i in range(self.held.n):
                    if part_add(&self.part, ptrs[i] + 1, ptrs[i][0]) < 0:
                        bad = 2
                        break
                if not bad and part_add(&self.part, self.pending,
                                        <size_t>self.npending) < 0:
                    bad = 2
            free(ptrs)
        if bad == 1:
            raise MemoryError("flatspill: no memory to cut the name range")
        ns_free(&self.held)
        self.spilling = True
        if bad == 2:
            raise_part_error(&self.part, spill_dir)
        self.run_shards()
        with nogil:
            bad = part_flush_all(&self.part)
        if bad < 0:
            raise_part_error(&self.part, spill_dir)
        return [self.part.count[b] for b in range(self.part.nb)]
