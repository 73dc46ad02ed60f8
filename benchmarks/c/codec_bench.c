/* The member codec study of docs/COMPRESSION.md: ISA-L deflate (what archives use) against
 * zstd on the same chunk payloads, one core, in memory. For each codec and level: compressed
 * size, then compress and decompress CPU seconds (CLOCK_PROCESS_CPUTIME_ID, the best of
 * REPEATS passes over all chunks, so other processes' load does not count) and what that is
 * in MB/s of raw payload. Decompression is what restore and deep verify pay per chunk:
 * ISA-L raw inflate plus the gzip member's CRC-32 (as ext/compress.pyx does), zstd
 * ZSTD_decompressDCtx (no frame checksum: the archive's payload XXH3 covers both alike).
 * Every round trip is compared with the input.
 *
 * With MEMBERS (the archive's own gzip members of the same chunks), one more line,
 * "archive": inflating those members as the reader does (ISA-L, gzip header and CRC-32), i.e.
 * with the writer's stored segments for incompressible data (docs/COMPRESSION.md).
 *
 * Input: files of chunk payloads / members, each as u64 little-endian length + bytes
 * (benchmarks/codec_payloads.py writes them from an archive).
 * Build: gcc -O2 -o codec_bench codec_bench.c -lisal -lzstd
 * Usage: codec_bench PAYLOADS [REPEATS [MEMBERS]]   (one JSON line per codec and level)
 */
#include <isa-l/crc.h>
#include <isa-l/igzip_lib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

typedef struct { unsigned char *p; size_t n; } buf;

static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *msg) { fprintf(stderr, "codec_bench: %s\n", msg); exit(2); }

static buf *load(const char *path, size_t *count, size_t *total) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the payload file");
    size_t cap = 256, n = 0;
    buf *v = malloc(cap * sizeof(buf));
    uint64_t len;
    *total = 0;
    while (fread(&len, 8, 1, f) == 1) {
        if (n == cap) v = realloc(v, (cap *= 2) * sizeof(buf));
        v[n].p = malloc(len ? len : 1);
        v[n].n = len;
        if (len && fread(v[n].p, 1, len, f) != len) die("truncated payload file");
        *total += len;
        n++;
    }
    fclose(f);
    *count = n;
    return v;
}

/* ISA-L level 1-3 raw deflate of one payload (as the archive writer: stateless, whole
 * buffer, level buffer sized per ISA-L's defaults) */
static size_t isal_compress(const buf *in, unsigned char *out, size_t cap, int level,
                            unsigned char *lvlbuf, size_t lvlsize) {
    struct isal_zstream s;
    isal_deflate_stateless_init(&s);
    s.level = level;
    s.level_buf = lvlbuf;
    s.level_buf_size = lvlsize;
    s.next_in = in->p;
    s.avail_in = in->n;
    s.next_out = out;
    s.avail_out = cap;
    s.end_of_stream = 1;
    s.flush = NO_FLUSH;
    if (isal_deflate_stateless(&s) != COMP_OK) die("isal_deflate_stateless failed");
    return s.total_out;
}

static uint32_t isal_decompress(const unsigned char *in, size_t n, unsigned char *out,
                                size_t cap, size_t expect) {
    struct inflate_state st;
    isal_inflate_init(&st);
    st.next_in = (unsigned char *)in;
    st.avail_in = n;
    st.next_out = out;
    st.avail_out = cap;
    if (isal_inflate_stateless(&st) != ISAL_DECOMP_OK || st.total_out != expect)
        die("isal_inflate_stateless failed");
    return crc32_gzip_refl(0, out, expect);  /* the member's CRC-32, checked by the reader */
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: codec_bench PAYLOADS [REPEATS]");
    int repeats = argc > 2 ? atoi(argv[2]) : 3;
    size_t count, total, maxn = 0;
    buf *in = load(argv[1], &count, &total);
    for (size_t i = 0; i < count; i++) if (in[i].n > maxn) maxn = in[i].n;
    size_t cap = ZSTD_compressBound(maxn) + maxn / 8 + 65536;
    buf *comp = malloc(count * sizeof(buf));
    for (size_t i = 0; i < count; i++) comp[i].p = malloc(cap);
    unsigned char *out = malloc(maxn + 1);
    size_t lvlsize = ISAL_DEF_LVL3_LARGE;
    unsigned char *lvlbuf = malloc(lvlsize);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    struct { const char *codec; int level; } runs[] = {
        {"isal", 1}, {"isal", 2}, {"isal", 3},
        {"zstd", -3}, {"zstd", -1}, {"zstd", 1}, {"zstd", 3},
    };
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        int isal = runs[r].codec[0] == 'i', level = runs[r].level;
        double best_c = 1e9, best_d = 1e9;
        size_t csize = 0;
        volatile uint32_t sink = 0;
        for (int rep = 0; rep < repeats; rep++) {
            csize = 0;
            double t0 = cpu_s();
            for (size_t i = 0; i < count; i++) {
                if (isal) {
                    comp[i].n = isal_compress(&in[i], comp[i].p, cap, level, lvlbuf, lvlsize);
                } else {
                    comp[i].n = ZSTD_compressCCtx(cctx, comp[i].p, cap, in[i].p, in[i].n, level);
                    if (ZSTD_isError(comp[i].n)) die(ZSTD_getErrorName(comp[i].n));
                }
                csize += comp[i].n;
            }
            double t1 = cpu_s();
            if (t1 - t0 < best_c) best_c = t1 - t0;
        }
        for (int rep = 0; rep < repeats; rep++) {
            double t0 = cpu_s();
            for (size_t i = 0; i < count; i++) {
                if (isal) {
                    sink ^= isal_decompress(comp[i].p, comp[i].n, out, maxn + 1, in[i].n);
                } else {
                    size_t got = ZSTD_decompressDCtx(dctx, out, maxn + 1, comp[i].p, comp[i].n);
                    if (ZSTD_isError(got) || got != in[i].n) die("zstd decompress failed");
                }
            }
            double t1 = cpu_s();
            if (t1 - t0 < best_d) best_d = t1 - t0;
        }
        /* the round trip is exact (checked once, outside the timed passes) */
        for (size_t i = 0; i < count; i++) {
            if (isal) isal_decompress(comp[i].p, comp[i].n, out, maxn + 1, in[i].n);
            else ZSTD_decompressDCtx(dctx, out, maxn + 1, comp[i].p, comp[i].n);
            if (memcmp(out, in[i].p, in[i].n) != 0) die("round trip differs");
        }
        printf("{\"codec\": \"%s\", \"level\": %d, \"chunks\": %zu, \"raw_bytes\": %zu, "
               "\"compressed_bytes\": %zu, \"ratio\": %.3f, \"compress_cpu_s\": %.4f, "
               "\"decompress_cpu_s\": %.4f, \"compress_MB_s\": %.0f, \"decompress_MB_s\": %.0f}\n",
               runs[r].codec, level, count, total, csize, (double)total / csize, best_c, best_d,
               total / best_c / 1e6, total / best_d / 1e6);
        fflush(stdout);
        (void)sink;
    }
    if (argc > 3) {
        size_t mcount, mtotal;
        buf *mem = load(argv[3], &mcount, &mtotal);
        if (mcount != count) die("MEMBERS holds another number of chunks than PAYLOADS");
        unsigned char *tarbuf = malloc(maxn + 65536);
        double best_d = 1e9;
        for (int rep = 0; rep < repeats; rep++) {
            double t0 = cpu_s();
            for (size_t i = 0; i < count; i++) {
                struct inflate_state st;
                isal_inflate_init(&st);
                st.crc_flag = ISAL_GZIP;   /* header, trailer and CRC-32 checked by ISA-L */
                st.next_in = mem[i].p;
                st.avail_in = mem[i].n;
                st.next_out = tarbuf;
                st.avail_out = maxn + 65536;
                if (isal_inflate(&st) != ISAL_DECOMP_OK || st.block_state != ISAL_BLOCK_FINISH)
                    die("inflating an archive member failed");
            }
            double t1 = cpu_s();
            if (t1 - t0 < best_d) best_d = t1 - t0;
        }
        printf("{\"codec\": \"archive\", \"level\": 1, \"chunks\": %zu, \"raw_bytes\": %zu, "
               "\"compressed_bytes\": %zu, \"ratio\": %.3f, \"decompress_cpu_s\": %.4f, "
               "\"decompress_MB_s\": %.0f}\n", count, total, mtotal, (double)total / mtotal,
               best_d, total / best_d / 1e6);
    }
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
    return 0;
}
