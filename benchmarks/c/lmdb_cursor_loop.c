/* Baseline for the native LMDB scan benchmark: walk every record of an environment with a
 * read-only cursor. Mode "sum" (default) only sums key and value lengths; mode "touch" also
 * copies every key and value into a 1 MiB buffer and hashes each key and each full buffer
 * with XXH3-64, the least work any scan that frames and checksums the data must do.
 * Prints one JSON line with the record count, the byte sum, and the loop's CPU and wall
 * seconds (environment open excluded; the best of REPEATS loops).
 *
 * Build: gcc -O2 -o lmdb_cursor_loop lmdb_cursor_loop.c -llmdb -lxxhash
 * Usage: lmdb_cursor_loop ENV_DIR [REPEATS [sum|touch]]
 */
#include <lmdb.h>
#include <xxhash.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void check(int rc, const char *what) {
    if (rc != MDB_SUCCESS) {
        fprintf(stderr, "lmdb_cursor_loop: %s: %s\n", what, mdb_strerror(rc));
        exit(2);
    }
}

int main(int argc, char **argv) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    int repeats = argc > 2 ? atoi(argv[2]) : 1;
    double best_cpu = 1e30, best_wall = 1e30;
    size_t count = 0, total = 0, used = 0;
    int touch = argc > 3 && strcmp(argv[3], "touch") == 0;
    unsigned char *buf = malloc(1 << 20);
    XXH64_hash_t h = 0;
    if (argc < 2 || buf == NULL) {
        fprintf(stderr, "usage: %s ENV_DIR [REPEATS [sum|touch]]\n", argv[0]);
        return 2;
    }
    check(mdb_env_create(&env), "mdb_env_create");
    check(mdb_env_open(env, argv[1], MDB_RDONLY | MDB_NOTLS, 0644), "mdb_env_open");
    for (int r = 0; r < repeats; r++) {
        double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID), w0 = clock_s(CLOCK_MONOTONIC);
        check(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), "mdb_txn_begin");
        check(mdb_dbi_open(txn, NULL, 0, &dbi), "mdb_dbi_open");
        check(mdb_cursor_open(txn, dbi, &cur), "mdb_cursor_open");
        count = 0;
        total = 0;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        while (rc == MDB_SUCCESS) {
            count++;
            total += k.mv_size + v.mv_size;
            if (touch) {
                if (used + k.mv_size + v.mv_size > (1 << 20)) {
                    h ^= XXH3_64bits(buf, used);
                    used = 0;
                }
                h ^= XXH3_64bits(k.mv_data, k.mv_size);
                if (k.mv_size + v.mv_size <= (1 << 20)) {
                    memcpy(buf + used, k.mv_data, k.mv_size);
                    memcpy(buf + used + k.mv_size, v.mv_data, v.mv_size);
                    used += k.mv_size + v.mv_size;
                }
            }
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        if (rc != MDB_NOTFOUND)
            check(rc, "mdb_cursor_get");
        mdb_cursor_close(cur);
        mdb_txn_abort(txn);
        double cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0, wall = clock_s(CLOCK_MONOTONIC) - w0;
        if (cpu < best_cpu)
            best_cpu = cpu;
        if (wall < best_wall)
            best_wall = wall;
    }
    mdb_env_close(env);
    printf("{\"records\": %zu, \"bytes\": %zu, \"cpu_s\": %.6f, \"wall_s\": %.6f, \"check\": %llu}\n",
           count, total, best_cpu, best_wall, (unsigned long long)h);
    free(buf);
    return 0;
}
