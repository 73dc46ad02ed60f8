/* Streaming XXH3-64 update for ext/seal.pyx: libxxhash's runtime-dispatched variant (AVX2 or
 * AVX-512 when the CPU has them) where setup.py found the library built with it
 * (DSBACKUP_XXH3_DISPATCH), else the plain one. Both give the same hash. The dispatched
 * function is declared here (as in xxh_x86dispatch.h, which not every install ships). */
#ifndef DSBACKUP_XXH3_UPDATE_H
#define DSBACKUP_XXH3_UPDATE_H
#include <xxhash.h>
#ifdef DSBACKUP_XXH3_DISPATCH
XXH_errorcode XXH3_64bits_update_dispatch(XXH3_state_t *state, const void *input, size_t len);
#define ds_xxh3_64_update XXH3_64bits_update_dispatch
#else
#define ds_xxh3_64_update XXH3_64bits_update
#endif
#endif
