# Included by lmdbcopy.pyx and lmdbwrite.pyx: open a writable LMDB environment the way both
# write (MDB_NOSYNC | MDB_NOMETASYNC: the caller syncs explicitly before recording progress)
# and create its unnamed database. `_error(rc, what)` is the including module's error maker.

cdef int open_write_env(MDB_env **env, MDB_dbi *dbi, str path, size_t map_size,
                        bint writemap=False) except -1:
    """Create and open the environment at `path` (a directory); `map_size` 0 keeps LMDB's.
    `writemap`: pages are written in place through the map (MDB_WRITEMAP), which saves a copy
    per page; LMDB then extends the file to the map size (see truncate_to_used)."""
    cdef MDB_txn *txn = NULL
    cdef int rc = mdb_env_create(env)
    if rc:
        raise _error(rc, f"{path}: mdb_env_create")
    if map_size:
        rc = mdb_env_set_mapsize(env[0], map_size)
        if rc:
            raise _error(rc, f"{path}: cannot set the map size")
    rc = mdb_env_open(env[0], os.fsencode(path),
                      MDB_NOTLS | MDB_NOSYNC | MDB_NOMETASYNC | (MDB_WRITEMAP if writemap else 0),
                      0o644)
    if rc:
        raise _error(rc, f"{path}: cannot open LMDB environment")
    rc = mdb_txn_begin(env[0], NULL, 0, &txn)
    if rc:
        raise _error(rc, f"{path}: cannot begin a write transaction")
    rc = mdb_dbi_open(txn, NULL, 0, dbi)
    if rc:
        mdb_txn_abort(txn)
        raise _error(rc, f"{path}: cannot open the database")
    rc = mdb_txn_commit(txn)
    if rc:
        raise _error(rc, f"{path}: cannot commit")
    return 0


cdef size_t used_bytes(MDB_env *env) noexcept:
    """Bytes of the data file in use (pages up to the last one); 0 when unknown."""
    cdef MDB_envinfo info
    cdef MDB_stat st
    if mdb_env_info(env, &info) or mdb_env_stat(env, &st):
        return 0
    return (info.me_last_pgno + 1) * st.ms_psize


cdef truncate_to_used(str path, size_t used):
    """Give back the sparse tail MDB_WRITEMAP added (LMDB grows the file again if needed)."""
    data = os.path.join(path, "data.mdb")
    try:
        if used and os.path.getsize(data) > used:
            os.truncate(data, used)
    except OSError:
        pass


cdef object reserve_growth(MDB_env *env, str path, size_t reserved, size_t extra,
                           object no_space):
    """Give data.mdb blocks up to `extra` bytes past the pages in use (posix_fallocate; ranges
    already allocated cost nothing) before a write transaction, so the write never meets a
    full disk halfway: through the map (MDB_WRITEMAP) that would be SIGBUS, through pwrite a
    short write LMDB reports as EIO. `reserved`: the end already reserved. Returns the new
    end; ENOSPC raises ``no_space(message, needed, free)``."""
    cdef int fd = -1
    cdef size_t used = used_bytes(env)
    cdef size_t end = used + extra
    if end <= reserved:
        return reserved
    if mdb_env_get_fd(env, &fd) or fd < 0:
        return reserved
    start = max(used, reserved)
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return end  # nothing to reserve with here
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            st = os.fstatvfs(fd)
            free = st.f_bavail * st.f_frsize
            raise no_space(f"{path}: no space left on device (needed {end - start} bytes, "
                           f"free {free})", end - start, free) from None
        raise _error_errno(exc.errno, f"{path}: cannot reserve space: {exc.strerror}")
    return end
