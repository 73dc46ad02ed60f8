# Extern declarations for xxHash (XXH3 one-shot and streaming). Declarations only. Through
# xxh3_dispatch.h, so that XXH3_64bits, XXH3_64bits_withSeed, XXH3_128bits and the two updates
# are libxxhash's CPU-dispatched (AVX2/AVX-512) variants where setup.py found them.
from libc.stdint cimport uint64_t


cdef extern from "xxh3_dispatch.h" nogil:
    ctypedef uint64_t XXH64_hash_t

    ctypedef enum XXH_errorcode:
        XXH_OK
        XXH_ERROR

    ctypedef struct XXH128_hash_t:
        XXH64_hash_t low64
        XXH64_hash_t high64

    ctypedef struct XXH128_canonical_t:
        unsigned char digest[16]

    ctypedef struct XXH3_state_t:
        pass

    XXH64_hash_t XXH3_64bits(const void *data, size_t length)
    XXH64_hash_t XXH3_64bits_withSeed(const void *data, size_t length, XXH64_hash_t seed)
    XXH128_hash_t XXH3_128bits(const void *data, size_t length)
    void XXH128_canonicalFromHash(XXH128_canonical_t *dst, XXH128_hash_t hash)

    XXH3_state_t *XXH3_createState()
    XXH_errorcode XXH3_freeState(XXH3_state_t *state)
    void XXH3_copyState(XXH3_state_t *dst, const XXH3_state_t *src)
    XXH_errorcode XXH3_64bits_reset(XXH3_state_t *state)
    XXH_errorcode XXH3_64bits_reset_withSeed(XXH3_state_t *state, XXH64_hash_t seed)
    XXH_errorcode XXH3_64bits_update(XXH3_state_t *state, const void *data, size_t length)
    XXH64_hash_t XXH3_64bits_digest(const XXH3_state_t *state)
    XXH_errorcode XXH3_128bits_reset(XXH3_state_t *state)
    XXH_errorcode XXH3_128bits_update(XXH3_state_t *state, const void *data, size_t length)
    XXH128_hash_t XXH3_128bits_digest(const XXH3_state_t *state)
