/* xxHash for every ext/ module (through libxxhash.pxd): xxhash.h, and where setup.py found the
 * library built with runtime CPU dispatch (DSBACKUP_XXH3_DISPATCH) the XXH3 hashing entry points
 * renamed to their dispatched variants, which pick AVX2 or AVX-512 when the CPU has them (the
 * plain ones of a portable build use SSE2 only: about 8x slower on long inputs). Both give the
 * same hash. Declared here as in xxh_x86dispatch.h, which not every install ships. */
#ifndef DSBACKUP_XXH3_DISPATCH_H
#define DSBACKUP_XXH3_DISPATCH_H
#include <xxhash.h>
#ifdef DSBACKUP_XXH3_DISPATCH
XXH64_hash_t XXH3_64bits_dispatch(const void *input, size_t len);
XXH64_hash_t XXH3_64bits_withSeed_dispatch(const void *input, size_t len, XXH64_hash_t seed);
XXH_errorcode XXH3_64bits_update_dispatch(XXH3_state_t *state, const void *input, size_t len);
XXH128_hash_t XXH3_128bits_dispatch(const void *input, size_t len);
XXH_errorcode XXH3_128bits_update_dispatch(XXH3_state_t *state, const void *input, size_t len);
#define XXH3_64bits XXH3_64bits_dispatch
#define XXH3_64bits_withSeed XXH3_64bits_withSeed_dispatch
#define XXH3_64bits_update XXH3_64bits_update_dispatch
#define XXH3_128bits XXH3_128bits_dispatch
#define XXH3_128bits_update XXH3_128bits_update_dispatch
#endif
#endif
