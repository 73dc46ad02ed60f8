# Extern declarations for LMDB (lmdb.h). Declarations only; see lmdbscan.pyx.


cdef extern from "lmdb.h" nogil:
    ctypedef struct MDB_env:
        pass
    ctypedef struct MDB_txn:
        pass
    ctypedef struct MDB_cursor:
        pass
    ctypedef unsigned int MDB_dbi

    ctypedef struct MDB_val:
        size_t mv_size
        void *mv_data

    ctypedef enum MDB_cursor_op:
        MDB_FIRST
        MDB_LAST
        MDB_PREV
        MDB_GET_CURRENT
        MDB_NEXT
        MDB_SET_RANGE

    int MDB_SUCCESS
    int MDB_NOTFOUND
    unsigned int MDB_RDONLY
    unsigned int MDB_NOSUBDIR
    unsigned int MDB_NOTLS
    unsigned int MDB_NORDAHEAD
    unsigned int MDB_DUPSORT

    char *mdb_strerror(int err)
    int mdb_env_create(MDB_env **env)
    int mdb_env_set_maxdbs(MDB_env *env, MDB_dbi dbs)
    int mdb_env_open(MDB_env *env, const char *path, unsigned int flags, unsigned int mode)
    void mdb_env_close(MDB_env *env)
    int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags, MDB_txn **txn)
    void mdb_txn_abort(MDB_txn *txn)
    void mdb_txn_reset(MDB_txn *txn)
    int mdb_txn_renew(MDB_txn *txn)
    size_t mdb_txn_id(MDB_txn *txn)
    int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi)
    int mdb_dbi_flags(MDB_txn *txn, MDB_dbi dbi, unsigned int *flags)
    int mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cursor)
    void mdb_cursor_close(MDB_cursor *cursor)
    int mdb_cursor_renew(MDB_txn *txn, MDB_cursor *cursor)
    int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op)


# Writing (lmdbcopy.pyx): write transactions, cursor puts, map size, explicit sync.
cdef extern from "lmdb.h" nogil:
    ctypedef struct MDB_envinfo:
        void *me_mapaddr
        size_t me_mapsize
        size_t me_last_pgno

    ctypedef struct MDB_stat:
        unsigned int ms_psize

    unsigned int MDB_NOSYNC
    unsigned int MDB_WRITEMAP
    unsigned int MDB_NOMETASYNC
    unsigned int MDB_APPEND
    unsigned int MDB_RESERVE
    int MDB_MAP_FULL
    int MDB_MAP_RESIZED

    int mdb_cursor_put(MDB_cursor *cursor, MDB_val *key, MDB_val *data, unsigned int flags)
    int mdb_txn_commit(MDB_txn *txn)
    int mdb_env_set_mapsize(MDB_env *env, size_t size)
    int mdb_env_info(MDB_env *env, MDB_envinfo *stat)
    int mdb_env_stat(MDB_env *env, MDB_stat *stat)
    int mdb_env_sync(MDB_env *env, int force)

    # lmdbwrite.pyx: puts that may meet an existing key, the key size limit
    int MDB_KEYEXIST
    unsigned int MDB_NOOVERWRITE
    int mdb_env_get_maxkeysize(MDB_env *env)
    # lmdbwrite.pyx: the data file, to reserve its growth before writing through the map
    int mdb_env_get_fd(MDB_env *env, int *fd)
