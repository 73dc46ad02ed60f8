# Included by lmdbcopy.pyx and lmdbwrite.pyx: open a writable LMDB environment the way both
# write (MDB_NOSYNC | MDB_NOMETASYNC: the caller syncs explicitly before recording progress)
# and create its unnamed database. `_error(rc, what)` is the including module's error maker.

cdef int open_write_env(MDB_env **env, MDB_dbi *dbi, str path, size_t map_size) except -1:
    """Create and open the environment at `path` (a directory); `map_size` 0 keeps LMDB's."""
    cdef MDB_txn *txn = NULL
    cdef int rc = mdb_env_create(env)
    if rc:
        raise _error(rc, f"{path}: mdb_env_create")
    if map_size:
        rc = mdb_env_set_mapsize(env[0], map_size)
        if rc:
            raise _error(rc, f"{path}: cannot set the map size")
    rc = mdb_env_open(env[0], os.fsencode(path), MDB_NOTLS | MDB_NOSYNC | MDB_NOMETASYNC, 0o644)
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
