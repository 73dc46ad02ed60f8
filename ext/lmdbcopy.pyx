"""Copy a key range from one LMDB environment to another with liblmdb, the GIL released.

The migration copy step's pass-through path between two LMDB stores: one read transaction on
the source (a fixed snapshot) and, per call of :meth:`LmdbCopier.copy`, one write transaction
on the target filled with ``mdb_cursor_put`` (``MDB_APPEND`` while the keys lie past the
target's last key, as in a copy into an empty store). No Python object is made per record.

The target is opened with ``MDB_NOSYNC``: :meth:`LmdbCopier.sync` forces the flush, and the
migration journal records progress only after it. ``MDB_MAP_FULL`` grows the map (doubling)
and redoes the batch. Like lmdbscan, this is a separate copy of LMDB from py-lmdb's: the caller
must make sure neither environment is open through py-lmdb in this process meanwhile
(:func:`dsbackup.datastores.lmdb.claim`).
"""

import errno
import os

from dsbackup.errors import LmdbOSError

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcmp

from liblmdb cimport (
    MDB_APPEND,
    MDB_FIRST,
    MDB_GET_CURRENT,
    MDB_LAST,
    MDB_MAP_FULL,
    MDB_MAP_RESIZED,
    MDB_NEXT,
    MDB_NOMETASYNC,
    MDB_NOSYNC,
    MDB_WRITEMAP,
    MDB_NOTFOUND,
    MDB_NOTLS,
    MDB_RDONLY,
    MDB_SET_RANGE,
    MDB_cursor,
    MDB_dbi,
    MDB_env,
    MDB_envinfo,
    MDB_stat,
    MDB_txn,
    MDB_val,
    mdb_cursor_close,
    mdb_cursor_get,
    mdb_cursor_open,
    mdb_cursor_put,
    mdb_dbi_open,
    mdb_env_close,
    mdb_env_create,
    mdb_env_get_fd,
    mdb_env_info,
    mdb_env_stat,
    mdb_env_open,
    mdb_env_set_mapsize,
    mdb_env_sync,
    mdb_txn_abort,
    mdb_txn_begin,
    mdb_txn_commit,
)
from lmdberror cimport lmdb_message

cdef int _MAX_GROWTHS = 40


class LmdbCopyError(LmdbOSError):
    """liblmdb reported an error while copying (exit 2): the message names the environment,
    the operation, and LMDB's text beside its return code; ``errno`` is set for a system
    error (printed without ``[Errno N]``: :class:`dsbackup.errors.LmdbOSError`)."""

    description = "LMDB copy failed"


class LmdbCopyNoSpace(LmdbCopyError):
    """The target's filesystem has no room for the next batch (nothing of it was written).
    ``needed``: bytes the reservation asked for; ``free``: bytes available."""

    description = "no space for an LMDB copy"

    def __init__(self, msg, needed, free):
        super().__init__(28, msg)  # ENOSPC
        self.needed = needed
        self.free = free


# before each batch the target file's growth is reserved (reserve_growth): twice the batch's
# value bytes, RECORD_SLACK per record and RESERVE_SLACK; a batch whose reservation does not
# fit is retried with a quarter of the bytes, down to MIN_BATCH_BYTES
cdef size_t RESERVE_SLACK = 2 << 20
cdef size_t RECORD_SLACK = 64
cdef size_t MIN_BATCH_BYTES = 1 << 20


cdef object _error_errno(int err, str what):
    return LmdbCopyError(err, what)


cdef object _error(int rc, str what):
    return LmdbCopyError(lmdb_message(rc, what))


include "lmdbenv.pxi"


cdef inline int _keycmp(const MDB_val *a, const char *b, size_t blen) noexcept nogil:
    cdef size_t n = a.mv_size if a.mv_size < blen else blen
    cdef int c = memcmp(a.mv_data, b, n)
    if c != 0:
        return c
    if a.mv_size < blen:
        return -1
    return 1 if a.mv_size > blen else 0


cdef class LmdbCopier:
    """Copies ``[start, end)`` of ``src_path`` into ``dst_path`` in batches."""

    cdef MDB_env *src
    cdef MDB_env *dst
    cdef MDB_txn *rtxn
    cdef MDB_cursor *rcur
    cdef MDB_dbi sdbi
    cdef MDB_dbi ddbi
    cdef bytes end
    cdef const char *endp
    cdef size_t endlen
    cdef bint has_end
    cdef bint at_current   # the read cursor sits on a record not copied yet
    cdef bint finished
    cdef MDB_val last      # last key copied (points into the source snapshot)
    cdef bint has_last
    cdef readonly str src_path
    cdef readonly str dst_path
    cdef long _pid
    cdef size_t _reserved   # bytes of the target's data.mdb known to have blocks

    def __cinit__(self):
        self.src = NULL
        self.dst = NULL
        self.rtxn = NULL
        self.rcur = NULL
        self.has_last = False
        self._reserved = 0

    def __init__(self, src_path, dst_path, bytes start=b"", end=None, size_t map_size=0):
        cdef int rc
        cdef MDB_val k, v
        if end is not None and not isinstance(end, bytes):
            raise TypeError("end must be bytes or None")
        self.src_path = os.fsdecode(os.fspath(src_path))
        self.dst_path = os.fsdecode(os.fspath(dst_path))
        self.end = end if end is not None else b""
        self.endp = self.end
        self.endlen = len(self.end)
        self.has_end = end is not None
        self._pid = os.getpid()
        try:
            rc = mdb_env_create(&self.src)
            if rc:
                raise _error(rc, f"{self.src_path}: mdb_env_create")
            rc = mdb_env_open(self.src, os.fsencode(self.src_path), MDB_RDONLY | MDB_NOTLS,
                              0o644)
            if rc:
                raise _error(rc, f"{self.src_path}: cannot open LMDB environment read-only")
            rc = mdb_txn_begin(self.src, NULL, MDB_RDONLY, &self.rtxn)
            if rc:
                raise _error(rc, f"{self.src_path}: cannot begin a read transaction")
            rc = mdb_dbi_open(self.rtxn, NULL, 0, &self.sdbi)
            if rc:
                raise _error(rc, f"{self.src_path}: cannot open the database")
            rc = mdb_cursor_open(self.rtxn, self.sdbi, &self.rcur)
            if rc:
                raise _error(rc, f"{self.src_path}: cannot open a cursor")
            os.makedirs(self.dst_path, exist_ok=True)
            open_write_env(&self.dst, &self.ddbi, self.dst_path, map_size)
            k.mv_size = len(start)
            k.mv_data = <char *>start
            rc = mdb_cursor_get(self.rcur, &k, &v, MDB_SET_RANGE if len(start) else MDB_FIRST)
            if rc == MDB_NOTFOUND:
                self.finished = True
            elif rc:
                raise _error(rc, f"{self.src_path}: cannot position the cursor")
            else:
                self.at_current = True
                self.finished = self.has_end and _keycmp(&k, self.endp, self.endlen) >= 0
        except BaseException:
            self.close()
            raise

    cdef int _batch(self, size_t max_records, size_t max_bytes, size_t *n, size_t *nbytes,
                    int *grow) noexcept nogil:
        """One write transaction. Returns 0 or an LMDB error; ``grow`` set on MAP_FULL after
        the read cursor was put back where the batch began."""
        cdef MDB_txn *wtxn = NULL
        cdef MDB_cursor *wcur = NULL
        cdef MDB_val k, v, dk, dv, first
        cdef int rc
        cdef unsigned int flags = 0
        cdef bint have_first = False
        n[0] = 0
        nbytes[0] = 0
        grow[0] = 0
        rc = mdb_txn_begin(self.dst, NULL, 0, &wtxn)
        if rc == MDB_MAP_RESIZED:
            mdb_env_set_mapsize(self.dst, 0)
            rc = mdb_txn_begin(self.dst, NULL, 0, &wtxn)
        if rc:
            return rc
        rc = mdb_cursor_open(wtxn, self.ddbi, &wcur)
        if rc:
            mdb_txn_abort(wtxn)
            return rc
        while n[0] < max_records and nbytes[0] < max_bytes:
            if self.at_current:
                rc = mdb_cursor_get(self.rcur, &k, &v, MDB_GET_CURRENT)
            else:
                rc = mdb_cursor_get(self.rcur, &k, &v, MDB_NEXT)
            if rc == MDB_NOTFOUND:
                self.finished = True
                rc = 0
                break
            if rc:
                break
            if self.has_end and _keycmp(&k, self.endp, self.endlen) >= 0:
                self.finished = True
                break
            if not have_first:
                first = k
                have_first = True
                # append mode when this batch starts past the target's last key
                if mdb_cursor_get(wcur, &dk, &dv, MDB_LAST) == MDB_NOTFOUND:
                    flags = MDB_APPEND
                elif _keycmp(&k, <const char *>dk.mv_data, dk.mv_size) > 0:
                    flags = MDB_APPEND
            self.at_current = False
            rc = mdb_cursor_put(wcur, &k, &v, flags)
            if rc:
                break
            self.last = k
            n[0] += 1
            nbytes[0] += v.mv_size
        if rc == 0:
            rc = mdb_txn_commit(wtxn)   # frees the cursor too
            if rc == 0:
                if n[0]:
                    self.has_last = True
                return 0
            wtxn = NULL
        else:
            mdb_cursor_close(wcur)
            mdb_txn_abort(wtxn)
            wtxn = NULL
        if rc == MDB_MAP_FULL and have_first:
            # put the read cursor back on the batch's first record and let the caller grow
            k = first
            if mdb_cursor_get(self.rcur, &k, &v, MDB_SET_RANGE) == 0:
                self.at_current = True
                self.finished = False
                grow[0] = 1
        return rc

    def copy(self, size_t max_records=20000, size_t max_bytes=64 << 20):
        """Copy the next batch; returns ``(last key or None, records, value bytes)``.
        ``(None, 0, 0)`` once the range is exhausted."""
        cdef size_t n = 0, nbytes = 0
        cdef int rc = 0, grow = 0, tries = 0
        cdef MDB_envinfo info
        self._check()
        if self.finished:
            return None, 0, 0
        while True:
            try:
                self._reserved = reserve_growth(
                    self.dst, self.dst_path, self._reserved,
                    2 * max_bytes + RECORD_SLACK * max_records + RESERVE_SLACK,
                    LmdbCopyNoSpace)
                break
            except LmdbCopyNoSpace:
                if max_bytes <= MIN_BATCH_BYTES:
                    raise
                max_bytes = max(MIN_BATCH_BYTES, max_bytes // 4)
                max_records = max(1, max_records // 4)
        while True:
            with nogil:
                rc = self._batch(max_records, max_bytes, &n, &nbytes, &grow)
            if rc == 0:
                break
            if grow and tries < _MAX_GROWTHS:
                tries += 1
                mdb_env_info(self.dst, &info)
                rc = mdb_env_set_mapsize(self.dst, info.me_mapsize * 2)
                if rc:
                    raise _error(rc, f"{self.dst_path}: cannot grow the map")
                continue
            raise _error(rc, f"copy {self.src_path} -> {self.dst_path}")
        if n == 0:
            return None, 0, 0
        return (PyBytes_FromStringAndSize(<const char *>self.last.mv_data, self.last.mv_size),
                n, nbytes)

    def sync(self):
        """Force the target's data to disk (it is written without per-commit fsync)."""
        cdef int rc
        self._check()
        with nogil:
            rc = mdb_env_sync(self.dst, 1)
        if rc:
            raise _error(rc, f"{self.dst_path}: sync")

    @property
    def done(self):
        return self.finished

    cdef _check(self):
        if self.src == NULL or self.dst == NULL:
            raise ValueError("LmdbCopier is closed")
        if os.getpid() != self._pid:
            raise RuntimeError("LmdbCopier cannot be used after fork")

    def close(self):
        cdef size_t used = 0
        if self.rcur != NULL:
            mdb_cursor_close(self.rcur)
            self.rcur = NULL
        if self.rtxn != NULL:
            mdb_txn_abort(self.rtxn)
            self.rtxn = NULL
        if self.src != NULL:
            mdb_env_close(self.src)
            self.src = NULL
        if self.dst != NULL:
            if self._reserved:  # only set once the environment is open and written
                used = used_bytes(self.dst)
            mdb_env_close(self.dst)
            self.dst = NULL
            if self._reserved:
                truncate_to_used(self.dst_path, used)  # the unused reservation back
                self._reserved = 0

    def __dealloc__(self):
        if os.getpid() == self._pid:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef int _compare(MDB_cursor *sc, MDB_cursor *dc, const char *endp, size_t endlen,
                  bint has_end, bint sfirst, size_t *n, size_t *nbytes, size_t *bad,
                  MDB_val *first_bad, int *first_bad_kind) noexcept nogil:
    """Walk the source cursor (already positioned, ``sfirst``: on its first record) and the
    target cursor side by side; count records missing (kind 1) or different (kind 2)."""
    cdef MDB_val k, v, dk, dv
    cdef int rc, drc, c
    cdef bint dvalid = False
    rc = mdb_cursor_get(sc, &k, &v, MDB_GET_CURRENT if sfirst else MDB_NEXT)
    while rc == 0:
        if has_end and _keycmp(&k, endp, endlen) >= 0:
            break
        if not dvalid:
            dk = k
            drc = mdb_cursor_get(dc, &dk, &dv, MDB_SET_RANGE)
            dvalid = drc == 0
        else:
            c = _keycmp(&dk, <const char *>k.mv_data, k.mv_size)
            while c < 0:
                drc = mdb_cursor_get(dc, &dk, &dv, MDB_NEXT)
                if drc != 0:
                    dvalid = False
                    break
                c = _keycmp(&dk, <const char *>k.mv_data, k.mv_size)
        n[0] += 1
        nbytes[0] += v.mv_size
        if not dvalid or _keycmp(&dk, <const char *>k.mv_data, k.mv_size) != 0:
            if bad[0] == 0:
                first_bad[0] = k
                first_bad_kind[0] = 1
            bad[0] += 1
            dvalid = False  # re-seek for the next source key
        elif dv.mv_size != v.mv_size or memcmp(dv.mv_data, v.mv_data, v.mv_size) != 0:
            if bad[0] == 0:
                first_bad[0] = k
                first_bad_kind[0] = 2
            bad[0] += 1
        rc = mdb_cursor_get(sc, &k, &v, MDB_NEXT)
    if rc == MDB_NOTFOUND:
        return 0
    return rc


def compare_range(src_path, dst_path, bytes start=b"", end=None):
    """Check that every record of ``src_path`` in ``[start, end)`` is in ``dst_path`` with the
    same value, reading both with liblmdb (GIL released). Returns ``(records, value bytes,
    mismatches, first bad key or None, "missing" | "differs" | None)``."""
    cdef MDB_env *envs[2]
    cdef MDB_txn *txns[2]
    cdef MDB_cursor *curs[2]
    cdef MDB_dbi dbi
    cdef MDB_val k, v, first_bad
    cdef int rc = 0, i, kind = 0
    cdef size_t n = 0, nbytes = 0, bad = 0
    cdef bint sfirst = True, empty = False
    cdef bytes endb = end if end is not None else b""
    cdef const char *endp = endb
    cdef size_t endlen = len(endb)
    cdef bint has_end = end is not None
    paths = [os.fsdecode(os.fspath(src_path)), os.fsdecode(os.fspath(dst_path))]
    for i in range(2):
        envs[i] = NULL
        txns[i] = NULL
        curs[i] = NULL
    try:
        for i in range(2):
            rc = mdb_env_create(&envs[i])
            if rc:
                raise _error(rc, f"{paths[i]}: mdb_env_create")
            rc = mdb_env_open(envs[i], os.fsencode(paths[i]), MDB_RDONLY | MDB_NOTLS, 0o644)
            if rc:
                raise _error(rc, f"{paths[i]}: cannot open LMDB environment read-only")
            rc = mdb_txn_begin(envs[i], NULL, MDB_RDONLY, &txns[i])
            if rc:
                raise _error(rc, f"{paths[i]}: cannot begin a read transaction")
            rc = mdb_dbi_open(txns[i], NULL, 0, &dbi)
            if rc:
                raise _error(rc, f"{paths[i]}: cannot open the database")
            rc = mdb_cursor_open(txns[i], dbi, &curs[i])
            if rc:
                raise _error(rc, f"{paths[i]}: cannot open a cursor")
        k.mv_size = len(start)
        k.mv_data = <char *>start
        rc = mdb_cursor_get(curs[0], &k, &v, MDB_SET_RANGE if len(start) else MDB_FIRST)
        if rc == MDB_NOTFOUND:
            empty = True
        elif rc:
            raise _error(rc, f"{paths[0]}: cannot position the cursor")
        if not empty:
            with nogil:
                rc = _compare(curs[0], curs[1], endp, endlen, has_end, sfirst, &n, &nbytes,
                              &bad, &first_bad, &kind)
            if rc:
                raise _error(rc, f"compare {paths[0]} with {paths[1]}")
        if bad:
            return (n, nbytes, bad,
                    PyBytes_FromStringAndSize(<const char *>first_bad.mv_data,
                                              first_bad.mv_size),
                    "missing" if kind == 1 else "differs")
        return n, nbytes, 0, None, None
    finally:
        for i in range(2):
            if curs[i] != NULL:
                mdb_cursor_close(curs[i])
            if txns[i] != NULL:
                mdb_txn_abort(txns[i])
            if envs[i] != NULL:
                mdb_env_close(envs[i])
