# The text of an LMDB failure, written once for lmdbscan, lmdbwrite and lmdbcopy: the
# operation (naming the environment), LMDB's own text and its return code. Each module raises
# it as its own exception class. Inline (compiled into each module that cimports it).
from liblmdb cimport mdb_strerror


cdef inline str lmdb_message(int rc, str what):
    return f"{what}: {mdb_strerror(rc).decode('utf-8', 'replace')} (LMDB error {rc})"
