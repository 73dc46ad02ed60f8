# XXH3-64 streaming update with libxxhash's CPU dispatch where available (xxh3_update.h).
# Declarations only; see seal.pyx.
from libxxhash cimport XXH3_state_t, XXH_errorcode


cdef extern from "xxh3_update.h" nogil:
    XXH_errorcode ds_xxh3_64_update(XXH3_state_t *state, const void *data, size_t length)
